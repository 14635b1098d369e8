"""The vote store: SQLAlchemy 2 models and engine set-up for SQLite (default) and PostgreSQL.

SQLite: WAL journal (readers never block the writer), `synchronous=NORMAL` (a committed vote survives a crash or
kill -9 of any process; `K3EVAL_SQLITE_SYNC=FULL` adds an fsync per commit so it survives a power cut too), a 5 s
busy timeout, and `BEGIN IMMEDIATE` for write transactions so
two writers never deadlock upgrading a read lock. PostgreSQL: `postgresql://...` URLs use psycopg 3.

The database holds a schema version (table `k3eval_meta`): a version-1 database (before studies could be closed) is
upgraded in place when opened, any other version is refused with a clear message. Tokens are stored only as sha256
hashes: a token is 32 random bytes, so a plain hash cannot be reversed by guessing.

Every error is a `StoreError` with two texts: `str(err)` for the organiser (it may name the study, a path or the
database URL) and `err.public` for an annotator's page (never a path, a URL or the study's name).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from k3eval.errors import UserError

SCHEMA_VERSION = 2  # 2: studies.closed_at (a closed study takes no more votes)
DEFAULT_DB = "sqlite:///k3eval.db"
BUSY_TIMEOUT_S = 5.0


class StoreError(UserError):
    """Base of the vote store's errors. `str(err)` is for the organiser (CLI, admin page, server log) and may name the
    study, a path or the database URL; `err.public` is what an annotator's page shows: it names none of them."""

    public_text = "The study's server could not do that right now. The study's organiser can see why in the server log."

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = public or self.public_text


class StoreUnavailable(StoreError):
    """The database cannot be used right now: locked for too long, missing, unreachable, or of another schema."""

    public_text = "The study's database cannot be used right now."


class StudyNotFound(StoreError):
    """No study of that name in the database."""

    public_text = "This study is not available on this server. Ask the study's organiser for the right link."


class StudyExists(StoreError):
    """`create_study` was asked for a name that is already taken."""


class AccessDenied(StoreError):
    """A token that is unknown, revoked or for another study, or an item not assigned to this annotator."""

    # The same text for every case, so that a page never tells whether a token exists, nor the study's name (which
    # organisers may have chosen after the models, e.g. "k3-vs-sdxl").
    public_text = ("This link or token is not valid (unknown, revoked, or for another study). Ask the study's "
                   "organiser for your personal link.")


class StudyClosed(StoreError):
    """The study was closed (`k3eval sbs close`): no vote is stored or changed any more."""

    public_text = "This study is closed: no more answers are accepted. The answers you gave are saved. Thank you!"


class PairNotCurrent(StoreError):
    """An answer for a pair that is no longer (or not yet) the one the annotator is asked about: `record_vote` with
    `expect=` refuses it. `position` is the pair's 1-based place in the queue; `reason` is 'finished' (the pair was
    already fully answered), 'not_shown' (a later pair than the current one) or 'not_finished' (a change to a pair
    that is not fully answered)."""

    def __init__(self, position: int, reason: str):
        text = {"finished": f"pair {position} was already finished when this answer arrived",
                "not_shown": f"pair {position} is not the current pair yet",
                "not_finished": f"pair {position} is not finished, so there is no earlier answer to change"}[reason]
        super().__init__(f"answer not counted: {text}", f"That answer was not counted: {text}.")
        self.position = position
        self.reason = reason


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def default_db_url() -> str:
    """$K3EVAL_DB if set, else `sqlite:///k3eval.db` (a file in the current folder)."""
    return os.environ.get("K3EVAL_DB") or DEFAULT_DB


# ---- models -----------------------------------------------------------------------------------------------------
class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON}


class Meta(Base):
    __tablename__ = "k3eval_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]
    questions: Mapped[dict] = mapped_column(JSON)  # list of question keys, in display order
    overlap: Mapped[int]
    gold: Mapped[float] = mapped_column(Float)
    repeats: Mapped[float] = mapped_column(Float)
    seed: Mapped[int]
    reference: Mapped[str | None] = mapped_column(String(200))
    prompt_set: Mapped[str] = mapped_column(Text)
    prompt_set_hash: Mapped[str] = mapped_column(String(64))
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    info: Mapped[dict] = mapped_column(JSON)  # protocol facts: k3eval version, package versions, design counts
    closed_at: Mapped[datetime | None]  # set by `k3eval sbs close`: from then on no vote is stored or changed


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int]
    path: Mapped[str] = mapped_column(Text)
    generator: Mapped[str] = mapped_column(Text)


class Image(Base):
    """An image a study shows. `id` is a random opaque string (what the page sees); `path` points into a run folder,
    or `data` holds the bytes of a degraded gold copy. Neither ever leaves the server."""

    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    run_name: Mapped[str] = mapped_column(String(200))
    prompt_id: Mapped[str] = mapped_column(String(200))
    sample: Mapped[int]
    degraded: Mapped[bool] = mapped_column(Boolean, default=False)
    path: Mapped[str | None] = mapped_column(Text)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # regular | gold | repeat
    prompt_id: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    sample: Mapped[int]
    model_a: Mapped[str] = mapped_column(String(200))
    model_b: Mapped[str] = mapped_column(String(200))
    image_a: Mapped[str] = mapped_column(ForeignKey("images.id"))
    image_b: Mapped[str] = mapped_column(ForeignKey("images.id"))
    gold_question: Mapped[str | None] = mapped_column(String(32))
    gold_answer: Mapped[str | None] = mapped_column(String(8))  # 'a' or 'b'
    repeat_of: Mapped[int | None] = mapped_column(ForeignKey("items.id"))


class AnnotatorRow(Base):
    """A person with a token: role 'annotator' (votes) or 'admin' (dashboard and export)."""

    __tablename__ = "annotators"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # annotator | admin
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    guideline_seen_at: Mapped[datetime | None]


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("annotator_id", "item_id"), UniqueConstraint("annotator_id", "position"))
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    left_is_a: Mapped[bool] = mapped_column(Boolean)


class Vote(Base):
    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("annotator_id", "item_id", "question", name="uq_vote_once"),
                      Index("ix_votes_study", "study_id", "id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    question: Mapped[str] = mapped_column(String(32))
    answer: Mapped[str] = mapped_column(String(16))  # left | right | equal | both_bad
    left_model: Mapped[str] = mapped_column(String(200))
    right_model: Mapped[str] = mapped_column(String(200))
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    changes: Mapped[int] = mapped_column(Integer, default=0)
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditLog(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id", ondelete="SET NULL"))
    # create | login | login_refused (one row per source and hour, with a count) | vote_changed | export | revoke |
    # close | reopen | delete
    event: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime]


class FifoLock:
    """A lock handed to waiters in arrival order. `threading.Lock` wakes an arbitrary waiter, so under a burst of
    votes one unlucky thread can wait many turns; first come, first served bounds every wait by the queue ahead."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            baton = threading.Lock()
            baton.acquire()
            self._waiters.append(baton)
        baton.acquire()  # released by the holder, which hands the lock over without unlocking it in between

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False


# ---- engines ----------------------------------------------------------------------------------------------------
_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()
_CHECKED: set[str] = set()
# One SQLite writer at a time per process. SQLite's busy handler polls and is not fair: with dozens of threads
# (Streamlit runs every browser session as a thread of one process) a writer can lose the race for seconds. Queuing
# writers of this process on a lock leaves the busy timeout to arbitrate only between processes.
_SQLITE_WRITE_LOCKS: dict[str, FifoLock] = {}


def normalize_url(db_url: str | None) -> str:
    """The URL to use: `db_url`, else `default_db_url()`; plain `postgresql://` means psycopg 3."""
    url = db_url or default_db_url()
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        make_url(url)
    except ArgumentError:
        raise UserError(f"database URL {url!r} is not a valid SQLAlchemy URL; expected e.g. sqlite:///k3eval.db or "
                        "postgresql://user@host/dbname") from None
    return url


def _sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def get_engine(db_url: str | None = None, *, create: bool = False) -> Engine:
    """The (cached, thread-safe) engine for `db_url`. Without `create`, a SQLite file that does not exist is refused
    instead of being created empty; with it, the file (and its folder) and the tables are created, and removed again
    if that fails half-way. The schema version is checked once (a version-1 database is upgraded)."""
    url = normalize_url(db_url)
    path = _sqlite_path(url)
    if path is not None and not create and not path.exists():
        raise StoreUnavailable(f"vote database {path} not found; create a study first (k3eval sbs create) or point "
                               "--db / K3EVAL_DB at the right database",
                               "The study's database was not found on the server.")
    with _ENGINES_LOCK:
        made = _new_sqlite_file(path) if path is not None and create and not path.exists() else None
        try:
            engine = _ENGINES.get(url)
            if engine is None:
                engine = _make_engine(url)
                _ENGINES[url] = engine
            if url not in _CHECKED or create:
                _check_schema(engine, url, create)
                _CHECKED.add(url)
        except BaseException:
            if made is not None:
                _remove_new_sqlite_file(url, made)
            raise
    return engine


def make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns the folders created, outermost first, so that a caller that
    fails afterwards can remove exactly those (`remove_folders`) and leave the file system as it was."""
    made: list[Path] = []
    try:
        for d in reversed([d for d in [folder, *folder.parents] if not d.exists()]):
            d.mkdir()
            made.append(d)
    except OSError:
        remove_folders(made)
        raise
    return made


def remove_folders(made: list[Path]) -> None:
    for d in reversed(made):
        d.rmdir()


def _new_sqlite_file(path: Path) -> list[Path]:
    """Create an empty SQLite file (and the folders it needs); returns what was created, file last. A place that
    cannot be written is a one-line UserError, and nothing is left behind."""
    import sqlite3

    made: list[Path] = []
    try:
        made = make_folders(path.parent)
        sqlite3.connect(path).close()
    except (OSError, sqlite3.Error) as e:
        remove_folders(made)
        why = getattr(e, "strerror", None) or str(e)
        raise UserError(f"--db: cannot create the vote database {path}: {why}; choose a writable place") from None
    return [*made, path]


def _remove_new_sqlite_file(url: str, made: list[Path]) -> None:
    engine = _ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()
    _CHECKED.discard(url)
    *folders, path = made
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    remove_folders(folders)


def dispose_engines() -> None:
    """Close every cached engine (tests, and servers that fork)."""
    with _ENGINES_LOCK:
        for e in _ENGINES.values():
            e.dispose()
        _ENGINES.clear()
        _CHECKED.clear()


def sqlite_synchronous() -> str:
    """$K3EVAL_SQLITE_SYNC: NORMAL (default) or FULL. In WAL mode both keep every committed vote through a crash or
    kill -9 of the process (the WAL is in the OS cache); FULL also fsyncs each commit, so votes survive a power cut
    or an OS crash too, at the price of one disk flush per vote (slow tails on shared or network disks)."""
    value = os.environ.get("K3EVAL_SQLITE_SYNC", "NORMAL").strip().upper()
    if value not in ("NORMAL", "FULL"):
        raise UserError(f"K3EVAL_SQLITE_SYNC: expected NORMAL or FULL, got {value!r}")
    return value


# Python packages of the SQLAlchemy drivers a URL may name (`--db mysql://...` without its driver installed).
DRIVER_PACKAGES = {"MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "mysql": "mysql-connector-python",
                   "psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "asyncpg": "asyncpg",
                   "pg8000": "pg8000", "oracledb": "oracledb", "cx_Oracle": "cx_Oracle", "pyodbc": "pyodbc",
                   "pymssql": "pymssql", "mariadb": "mariadb"}


def _make_engine(url: str) -> Engine:
    from sqlalchemy.exc import NoSuchModuleError

    from k3eval.errors import MissingDependencyError

    try:
        return _create_engine(url)
    except NoSuchModuleError:
        raise UserError(f"--db {_shown(url)}: unknown kind of database {make_url(url).get_backend_name()!r}; expected "
                        "sqlite:///FILE or postgresql://USER@HOST/DB") from None
    except ImportError as e:
        module = (e.name or "").split(".")[0]
        raise MissingDependencyError(DRIVER_PACKAGES.get(module, module or "its database driver"),
                                     f"--db {_shown(url)}") from None


def _create_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        path = _sqlite_path(url)
        sync = sqlite_synchronous()
        kwargs = {}
        if path is not None:
            import sqlite3

            uri = f"file:{path.resolve()}?mode=rw"

            def creator():
                # mode=rw: a database deleted while the server runs is an error, never silently recreated empty
                return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)

            kwargs["creator"] = creator
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
                               pool_size=8, max_overflow=56, pool_timeout=30, **kwargs)
        _SQLITE_WRITE_LOCKS.setdefault(str(engine.url), FifoLock())

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # The driver's own transaction handling is switched off so that BEGIN is ours (IMMEDIATE for writes).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            write = conn.get_execution_options().get("k3eval_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return create_engine(url, pool_size=10, max_overflow=60, pool_pre_ping=True, pool_timeout=30)


def _check_schema(engine: Engine, url: str, create: bool) -> None:
    try:
        names = set(inspect(engine).get_table_names())
        if "k3eval_meta" not in names:
            if not create:
                raise StoreUnavailable(f"{_shown(url)} holds no k3eval studies (no k3eval_meta table); create a "
                                       "study first (k3eval sbs create)",
                                       "The study's database on the server holds no studies.")
            Base.metadata.create_all(engine)
            with session(engine, write=True) as s:
                if s.get(Meta, "schema_version") is None:
                    s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        with session(engine) as s:
            row = s.get(Meta, "schema_version")
        found = row.value if row else "none"
        if found == "1":
            _upgrade_from_1(engine)
        elif found != str(SCHEMA_VERSION):
            raise StoreUnavailable(f"{_shown(url)} has vote-store schema version {found}, this k3eval uses "
                                   f"{SCHEMA_VERSION}; use a matching k3eval version or a new database",
                                   "The study's database was made by another version of k3eval.")
    except DBAPIError as e:
        raise unavailable(e, url) from None


def _upgrade_from_1(engine: Engine) -> None:
    """Version 1 -> 2: add studies.closed_at (NULL: every existing study stays open). Idempotent and safe when several
    processes open the same old database at once: the version is read again under the write lock."""
    meta = Meta.__table__
    with connection(engine, write=True) as c:
        version = c.execute(select(meta.c.value).where(meta.c.key == "schema_version").with_for_update()).scalar()
        if version != "1":
            return
        column_type = Study.__table__.c.closed_at.type.compile(dialect=engine.dialect)
        c.exec_driver_sql(f"ALTER TABLE studies ADD COLUMN closed_at {column_type}")
        c.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def unavailable(err: Exception, url: str | None = None) -> StoreUnavailable:
    """Turn a driver error into a message a person can act on: the detail (with the database's URL) for the
    organiser, and a text without any path or URL for an annotator's page (`.public`)."""
    text = str(getattr(err, "orig", err)).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    where = _shown(url) if url else "the vote database"
    if "unable to open database file" in text:
        return StoreUnavailable(f"{where} is gone or cannot be opened (file deleted, moved or unreadable); restore it "
                                "or point --db / K3EVAL_DB at the right database",
                                "The study's database cannot be opened on the server right now.")
    if "locked" in text or "busy" in text:
        return StoreUnavailable(f"{where} is busy (locked by another writer for more than {BUSY_TIMEOUT_S:.0f} s); "
                                "try again in a moment",
                                f"The study's database is busy (another write held it for more than "
                                f"{BUSY_TIMEOUT_S:.0f} s); try again in a moment.")
    if "readonly" in text or "read-only" in text:
        return StoreUnavailable(f"{where} is read-only ({text}); make it writable for the server",
                                "The study's database is read-only on the server, so answers cannot be saved.")
    return StoreUnavailable(f"{where} cannot be used: {text}")


@contextmanager
def _guarded(engine: Engine, write: bool) -> Iterator[Engine]:
    """What every transaction shares: the in-process SQLite writer queue for writes, and driver errors (locked, gone,
    unreachable) turned into `StoreUnavailable`; integrity errors propagate unchanged. Yields the bind to use."""
    from sqlalchemy.exc import IntegrityError

    bind = engine.execution_options(k3eval_write=True) if write else engine
    lock = _SQLITE_WRITE_LOCKS.get(str(engine.url)) if write else None
    if lock is not None:
        lock.acquire()
    try:
        yield bind
    except IntegrityError:
        raise
    except OperationalError as e:
        raise unavailable(e, str(engine.url)) from None
    except DBAPIError as e:
        if getattr(e, "connection_invalidated", False):
            raise unavailable(e, str(engine.url)) from None
        raise
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def session(engine: Engine, write: bool = False) -> Iterator[Session]:
    """A short transaction: committed when the block ends, rolled back on error. `write=True` takes the write lock at
    the start (SQLite BEGIN IMMEDIATE), so the transaction never fails halfway on a lock upgrade. Driver errors
    (locked, gone, unreachable) come out as `StoreUnavailable`; integrity errors propagate unchanged."""
    with _guarded(engine, write) as bind, Session(bind, expire_on_commit=False) as s, s.begin():
        yield s


@contextmanager
def connection(engine: Engine, write: bool = False) -> Iterator[Connection]:
    """Like `session` but a Core connection: the hot paths (votes, the queue) use it because it costs a fraction of
    an ORM session per statement, which matters when dozens of annotators vote at once."""
    with _guarded(engine, write) as bind, bind.begin() as conn:
        yield conn


def find_study(s: Session, name: str) -> Study:
    st = s.scalars(select(Study).where(Study.name == name)).first()
    if st is None:
        known = s.scalars(select(Study.name).order_by(Study.name)).all()
        shown = ", ".join(known[:20]) or "none"
        raise StudyNotFound(f"study {name!r} not found in this database (studies: {shown})")
    return st


def audit(s: Session, event_name: str, study_id: int | None, annotator_id: int | None = None, **detail) -> None:
    s.add(AuditLog(study_id=study_id, annotator_id=annotator_id, event=event_name, detail=detail,
                   created_at=utcnow()))


__all__ = ["AccessDenied", "AnnotatorRow", "Assignment", "AuditLog", "Base", "Image", "Item", "Meta", "Run",
           "PairNotCurrent", "SCHEMA_VERSION", "StoreError", "StoreUnavailable", "Study", "StudyClosed", "StudyExists",
           "StudyNotFound", "Vote",
           "audit", "connection", "default_db_url", "dispose_engines", "find_study", "get_engine", "hash_token",
           "normalize_url", "session", "utcnow"]
