"""A study made from run folders written by the real generation code with the tiny offline pipeline."""

from __future__ import annotations

import io

from PIL import Image

import k3eval.sbs as sbs
from k3eval.generate import generate_run
from k3eval.generators.registry import get_entry
from k3eval.prompts import load_prompt_set


def test_study_from_tiny_sd_runs_end_to_end(tmp_path):
    prompts = load_prompt_set("parti").select(limit=3)
    entry = get_entry("tiny-sd")
    runs = {}
    for name, steps in (("sd-2steps", 2), ("sd-3steps", 3)):
        gen = entry.create({"steps": steps})
        generate_run(gen, prompts, tmp_path / name, samples=1, seed=0, progress=False)
        gen.close()
        runs[name] = tmp_path / name
    db = f"sqlite:///{tmp_path / 'votes.db'}"
    created = sbs.create_study("tiny", runs, 2, overlap=2, gold=0.34, repeats=0.0, db_url=db)
    assert created.n_items == 3 + 1 and created.n_gold == 1
    for token in created.tokens.values():
        who = sbs.authenticate(token, "tiny", db)
        while (view := sbs.next_item(who)) is not None:
            assert view.prompt in {p.text for p in prompts}
            for cid in (view.left, view.right):
                img = Image.open(io.BytesIO(sbs.image_bytes(who, cid)))
                assert img.mode == "RGB" and min(img.size) >= 16
            for q in view.questions:
                sbs.record_vote(who, view.item_id, q.key, "equal", 1.0)
    df = sbs.votes_frame("tiny", db)
    assert len(df) == 2 * 4 * 2 and set(df.loc[~df["is_gold"], "winner"]) == {"tie"}
    info = sbs.study_info("tiny", db)
    assert info["prompt_set_hash"] == prompts.content_hash() and info["n_votes"] == len(df)
