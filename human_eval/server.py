"""What `k3eval sbs serve` runs: the annotation app (app.py) behind `k3eval.sbs.cli_app.BlockPaths`, which answers
404 for Streamlit's public metrics endpoint. `streamlit run` finds the `app` below and serves app.py through it."""

import streamlit as st
from starlette.middleware import Middleware

from k3eval.sbs.cli_app import BlockPaths

app = st.App("app.py", middleware=[Middleware(BlockPaths)])
