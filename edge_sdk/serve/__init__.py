"""`edge-sdk serve`: a self-hosted fine-tuning service that speaks the OpenAI fine-tuning API (files and
fine-tuning jobs under /v1) and returns device bundles. Jobs run `edge-sdk finetune` and
`edge-sdk build --adapter-from` in subprocesses. Host side; needs the `serve` extra (FastAPI, uvicorn, SQLAlchemy,
Huey)."""
