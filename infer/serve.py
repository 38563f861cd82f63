"""seq2seq-serve: an HTTP translation server (FastAPI on uvicorn) with the model loaded once.

    seq2seq-serve CHECKPOINT [--host 127.0.0.1] [--port 8000] [--device ...] [--dtype ...]

POST /translate {"sentences": [...], "beam_size": 5, "n_best": 2, "max_len": 200, "sample": false,
                 "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0, "prefixes": [...]}
  -> {"translations": [...]}: a string per sentence, or with n_best a list of {"text", "score"}.
GET /health -> model, vocabulary sizes, device and dtype.

Requests that arrive together and ask for the same search are translated in one engine call
(dynamic batching): the batcher waits up to --batch-wait-ms after the first request, or until
--max-batch-sentences, and hands each request its own answers, in order. The engine runs on one
worker thread. A bad request gets a 4xx JSON {"error": "..."} naming the field (options the
search itself refuses, such as n_best above beam_size, come back from it as 422); a request that
fails inside the engine fails alone (its batch is retried request by request). On SIGINT/SIGTERM
the server stops taking connections and finishes the requests in flight.
"""
# No `from __future__ import annotations`: FastAPI reads the request model's annotation at run time.
import asyncio
import concurrent.futures
import dataclasses
from typing import Optional

STOP = object()  # queued at shutdown, after the requests already waiting
SEARCH_FIELDS = ("beam_size", "n_best", "max_len", "sample", "temperature", "top_k", "top_p", "seed", "greedy")


@dataclasses.dataclass(frozen=True)
class Limits:
    max_sentences: int = 256  # sentences per request
    max_chars: int = 2000  # characters per sentence or prefix
    max_batch_sentences: int = 512  # sentences per engine call
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others


def create_app(translator, limits: Limits = Limits(), name: str = "model"):
    """The FastAPI app serving `translator` (an infer.Translator)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class TranslateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")  # an unknown option is an error, not ignored
        sentences: list[str] = Field(min_length=1, max_length=limits.max_sentences)
        beam_size: int = Field(5, ge=1, le=64)
        n_best: Optional[int] = Field(None, ge=1, le=64)
        greedy: bool = False
        max_len: int = Field(256, ge=1)
        sample: bool = False
        temperature: float = Field(1.0, gt=0)
        top_k: int = Field(0, ge=0)
        top_p: float = Field(1.0, gt=0, le=1)
        seed: int = 0
        prefixes: Optional[list[str]] = None

        @field_validator("sentences", "prefixes")
        @classmethod
        def short_enough(cls, lines):
            for i, line in enumerate(lines or []):
                if len(line) > limits.max_chars:
                    raise ValueError(f"item {i}: {len(line)} characters, more than {limits.max_chars}")
            return lines

    batcher = Batcher(translator, limits)
    app = FastAPI(title="seq2seq", lifespan=batcher.lifespan)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = first.get("loc", ())
        if first.get("type") == "json_invalid":
            return JSONResponse(status_code=422, content={"error": f"body: invalid JSON at character {loc[-1]}"})
        where = ".".join(str(part) for part in loc if part != "body") or "body"
        return JSONResponse(status_code=422, content={"error": f"{where}: {first.get('msg', 'invalid')}"})

    @app.get("/health")
    async def health():
        mc = translator.model.config
        return {"status": "ok", "model": name, "src_vocab_size": mc.src_vocab_size, "tgt_vocab_size": mc.tgt_vocab_size,
                "device": str(translator.device), "dtype": translator.dtype}

    @app.post("/translate")
    async def translate(body: TranslateRequest):
        if body.prefixes is not None and len(body.prefixes) != len(body.sentences):
            return JSONResponse(status_code=422, content={
                "error": f"prefixes: {len(body.prefixes)} for {len(body.sentences)} sentences"})
        options = tuple((key, getattr(body, key)) for key in SEARCH_FIELDS)
        try:
            found = await batcher.submit(options, body.sentences, body.prefixes)
        except ValueError as err:  # options the search refuses (SearchConfig, Translator): the request's fault
            return JSONResponse(status_code=422, content={"error": str(err)})
        except Exception as err:  # this request's own failure: the server goes on
            return JSONResponse(status_code=500, content={"error": f"translation failed: {err}"})
        if body.n_best is None:
            return {"translations": found}
        return {"translations": [[{"text": t, "score": s} for t, s in hyps] for hyps in found]}

    return app


class Batcher:
    """Gathers requests with the same search options into one engine call on one worker thread."""

    def __init__(self, translator, limits: Limits):
        self.translator, self.limits = translator, limits
        self.queue: asyncio.Queue | None = None
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    async def submit(self, options: tuple, sentences: list[str], prefixes: list[str] | None):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((options, sentences, prefixes, future))
        return await future

    async def lifespan(self, app):
        self.queue = asyncio.Queue()
        task = asyncio.create_task(self.run())
        yield
        await self.queue.put(STOP)  # the requests already queued are answered first
        await task
        self.worker.shutdown(wait=True)

    async def run(self) -> None:
        loop, held = asyncio.get_running_loop(), None
        while True:
            first = held if held is not None else await self.queue.get()
            held = None
            if first is STOP:
                return
            batch, size = [first], len(first[1])
            deadline = loop.time() + self.limits.batch_wait_ms / 1000
            while size < self.limits.max_batch_sentences:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if item is STOP or item[0] != first[0] or size + len(item[1]) > self.limits.max_batch_sentences:
                    held = item  # another search, or no room: it starts the next batch
                    break
                batch.append(item)
                size += len(item[1])
            await self._answer(batch)

    async def _answer(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.worker, self._translate, batch)
        except Exception as err:
            if len(batch) == 1:
                batch[0][3].set_exception(err)
                return
            for item in batch:  # find the request that fails: the others still get answers
                await self._answer([item])
            return
        start = 0
        for _, sentences, _, future in batch:
            if not future.done():
                future.set_result(results[start : start + len(sentences)])
            start += len(sentences)

    def _translate(self, batch: list) -> list:
        options = dict(batch[0][0])
        lines = [s for _, sentences, _, _ in batch for s in sentences]
        prefixes = None
        if any(p is not None for _, _, p, _ in batch):
            prefixes = [x for _, sentences, p, _ in batch for x in (p if p is not None else [""] * len(sentences))]
        return self.translator.translate(lines, prefixes=prefixes, **options)


def serve_main(argv: list[str] | None = None) -> int:
    from infer.cli import OneLineParser, _run
    from infer.translator import DTYPE_NAMES

    p = OneLineParser(prog="seq2seq-serve", description="Serve a checkpoint over HTTP (JSON API; see docs/REFERENCE.md).")
    p.add_argument("checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cuda where there is one)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="fp32, bf16, fp16 or int8 (CPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="CPU: batches translated at once (default: one per thread up to 4 threads, else 1)")
    p.add_argument("--max-sentences", type=int, default=Limits.max_sentences, help="sentences per request")
    p.add_argument("--max-chars", type=int, default=Limits.max_chars, help="characters per sentence")
    p.add_argument("--max-batch-sentences", type=int, default=Limits.max_batch_sentences, help="sentences per engine call")
    p.add_argument("--batch-wait-ms", type=float, default=Limits.batch_wait_ms, help="wait for more requests (ms)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)

    def body() -> int:
        import uvicorn

        from infer.translator import Translator

        translator = Translator.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype,
                                                workers=args.workers)
        limits = Limits(args.max_sentences, args.max_chars, args.max_batch_sentences, args.batch_wait_ms)
        app = create_app(translator, limits, name=args.checkpoint)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
        return 0

    return _run(p.prog, args.debug, body)


if __name__ == "__main__":
    import sys

    sys.exit(serve_main())
