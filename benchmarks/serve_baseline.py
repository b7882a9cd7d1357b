"""The usual way, for comparison: FastAPI calling a transformers pipeline per request (no batching).

    MODEL_DIR=runs/x/model uvicorn serve_baseline:app --port 8001
"""

import os

from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

classifier = pipeline("text-classification", model=os.environ["MODEL_DIR"], device=-1)
app = FastAPI()


class Request(BaseModel):
    texts: list[str]


@app.post("/v1/predict")
def predict(body: Request):  # a plain def: FastAPI runs it in its thread pool, as most services do
    return {"predictions": classifier(body.texts, truncation=True)}


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
