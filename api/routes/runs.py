"""/v1/runs/{id}: a run with its history, its job's log (a tail or a byte range), cancel, retry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse, StreamingResponse

from api.deps import Db, JobsDep
from api.schemas import ErrorOut, RunOut
from services import sweeps

router = APIRouter(prefix="/runs", tags=["runs"], responses={404: {"model": ErrorOut}})
RunId = Annotated[str, Path(max_length=120)]
MAX_LOG_BYTES = 2**20
CHUNK = 64 * 1024


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: RunId, db: Db):
    return RunOut.of(sweeps.get_run(db, run_id), events=True)


@router.get("/{run_id}/logs", response_class=PlainTextResponse)
def run_logs(
    run_id: RunId,
    db: Db,
    jobs: JobsDep,
    tail: Annotated[int, Query(ge=1, le=MAX_LOG_BYTES, description="the last bytes of the log")] = 64 * 1024,
    offset: Annotated[int | None, Query(ge=0, le=2**53, description="a byte range instead: its start")] = None,
    length: Annotated[int, Query(ge=1, le=MAX_LOG_BYTES, description="the byte range's length")] = 64 * 1024,
):
    """The current attempt's job log: its tail (default 64 KiB), or `offset` and `length` bytes; at most 1 MiB."""
    run = sweeps.get_run(db, run_id)
    if jobs is None or run.submission_id is None:
        return PlainTextResponse("")
    path = jobs.log_file(run.submission_id)
    if path is None:  # a remote head: the job server hands out whole logs only; slice them here
        text = jobs.logs(run.submission_id).encode()
        piece = text[-tail:] if offset is None else text[offset : offset + length]
        return PlainTextResponse(piece.decode(errors="replace"), headers={"X-Log-Size": str(len(text))})
    size = path.stat().st_size
    start, n = (max(0, size - tail), tail) if offset is None else (min(offset, size), length)

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            f.seek(start)
            left = n
            while left > 0 and (block := f.read(min(CHUNK, left))):
                left -= len(block)
                yield block

    return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8", headers={"X-Log-Size": str(size)})


@router.post("/{run_id}/cancel", response_model=RunOut)
def cancel_run(run_id: RunId, db: Db):
    return RunOut.of(sweeps.cancel_run(db, run_id), events=True)


@router.post("/{run_id}/retry", response_model=RunOut, responses={409: {"model": ErrorOut}})
def retry_run(run_id: RunId, db: Db):
    """A failed or cancelled run goes back to the queue as a new attempt that resumes from its checkpoint."""
    return RunOut.of(sweeps.retry_run(db, run_id), events=True)
