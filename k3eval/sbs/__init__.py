"""Blind side-by-side human studies: design, vote store, rules, export.

Public API (every function takes plain values; errors are UserError subclasses whose message can be shown as is):

- `create_study(name, runs, annotators, overlap, ...) -> StudyCreated` (plaintext tokens and links, returned once)
- `authenticate(token, study, db_url=None) -> Annotator | Admin`
- `next_item`, `previous_item`, `item_view`, `queue`, `progress`, `image_bytes`, `record_vote` (annotator side)
- `admin_overview`, `votes_frame`, `study_info`, `export_votes`, `revoke`, `set_closed` (organiser side)
- `default_db_url()`: $K3EVAL_DB, else sqlite:///k3eval.db

Heavy modules (pandas, PIL, scipy) are imported inside functions, so importing this package is cheap.
"""

from k3eval.sbs.export import AdminOverview, AnnotatorStats, admin_overview, export_votes, study_info, votes_frame
from k3eval.sbs.service import (
    Admin,
    Annotator,
    ItemView,
    Question,
    QueueEntry,
    StudyCreated,
    VoteResult,
    authenticate,
    create_study,
    delete_study,
    image_bytes,
    item_view,
    mark_guideline_seen,
    next_item,
    previous_item,
    progress,
    queue,
    record_vote,
    revoke,
    set_closed,
)
from k3eval.sbs.store import (
    AccessDenied,
    PairNotCurrent,
    StoreError,
    StoreUnavailable,
    StudyClosed,
    StudyExists,
    StudyNotFound,
    default_db_url,
    dispose_engines,
)

__all__ = [
    "AccessDenied", "Admin", "AdminOverview", "Annotator", "AnnotatorStats", "ItemView", "PairNotCurrent", "Question",
    "QueueEntry", "StoreError", "StoreUnavailable", "StudyClosed", "StudyCreated", "StudyExists", "StudyNotFound",
    "VoteResult", "admin_overview",
    "authenticate", "create_study", "default_db_url", "delete_study", "dispose_engines", "export_votes",
    "image_bytes", "item_view", "mark_guideline_seen", "next_item", "previous_item", "progress", "queue",
    "record_vote", "revoke", "set_closed", "study_info", "votes_frame",
]
