"""`myopia sweep …` and `myopia run …`: the REST API from the command line (MYOPIA_API_URL, MYOPIA_API_TOKEN)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 140)  # a log or a pipe gets whole table rows
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass(frozen=True)
class Api:
    """The control plane's REST API; errors become one-line CLI errors."""

    url: str
    token: str | None = None

    @classmethod
    def from_env(cls) -> Api:
        return cls(os.environ.get("MYOPIA_API_URL", "http://127.0.0.1:8000"), os.environ.get("MYOPIA_API_TOKEN"))

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            r = httpx.request(method, self.url + path, headers={**headers, **kw.pop("headers", {})}, timeout=60, **kw)
        except httpx.HTTPError as e:
            raise click.ClickException(
                f"cannot reach the control plane at {self.url}: {e} (is `myopia serve` running?)"
            ) from None
        if r.status_code >= 400:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text
            raise click.ClickException(f"{r.status_code}: {message}")
        return r


def _call(method: str, path: str, **kw: Any) -> httpx.Response:
    return Api.from_env().call(method, path, **kw)


def runs_table(sweep: dict[str, Any]) -> Table:
    table = Table(
        "run", "size", "seed", "arm", "status", "attempt", title=f"{sweep['id']} {sweep['name']}: {sweep['status']}"
    )
    for r in sweep["runs"]:
        table.add_row(r["id"], r["size"], str(r["seed"]), r["arm"], r["status"], str(r["attempt"]))
    return table


def _interval(ci: list[float] | None, why_none: str = "-") -> str:
    return why_none if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def results_table(res: dict[str, Any]) -> Table:
    drift = any("test" in s for s in res["sizes"])
    bigram = any(s.get("bigram_loss_mean") is not None for s in res["sizes"])
    columns = ["size", "params", "pairs", "vanilla", "myopic", *(["bigram"] if bigram else []), "gap"]
    columns += ["CI seeds", "CI held-out"] + (["share lost"] if bigram else [])
    dp = any(s.get("fraction_of_baseline") for s in res["sizes"])
    columns += ["÷ baseline, past window"] if dp else []
    local = any(s.get("bonus") is not None for s in res["sizes"])
    columns += ["local", "bonus"] if local else []
    accuracy = any(s.get("accuracy") for s in res["sizes"])
    columns += ["exact match"] if accuracy else []
    caption = "params: non-embedding; CI: 95% interval of the gap over seeds (training variance) and over held-out "
    caption += "sequences (evaluation variance)"
    caption += "; share lost: (myopic − vanilla) / (bigram − vanilla)" if bigram else ""
    caption += "; ÷ baseline: Huber/p over the trivial myopic baseline's (0 where z = 1, x where z = 0)" if dp else ""
    caption += "; bonus: the local myopia bonus, vanilla − local, 95% interval over seeds" if local else ""
    caption += "; exact match: of the product, mean over seeds (hardest: max × max digits)" if accuracy else ""
    table = Table(title="myopia gap (myopic − vanilla)", caption=caption)
    for name in [*columns, *(["drift (Holm-adjusted p)"] if drift else [])]:
        table.add_column(name, overflow="fold")  # a narrow terminal wraps a number; it never cuts it to "4.70…"
    for s in res["sizes"]:
        row = [
            s["size"],
            f"{s['n_params_nonembedding']:,}",
            str(s["n_pairs"]),
            f"{s['vanilla_loss_mean']:.4f}",
            f"{s['myopic_loss_mean']:.4f}",
            *([_number(s.get("bigram_loss_mean"), ".4f")] if bigram else []),
            f"{s['gap_mean']:+.4f}",
            _interval(s["gap_ci95"], "- (1 pair)"),
            _interval(s.get("gap_eval_ci95")),
        ]
        if bigram:
            share = s.get("share_lost")
            ci = s.get("share_lost_ci95") or s.get("share_lost_eval_ci95")
            which = "seeds" if s.get("share_lost_ci95") else "held-out"
            unbounded = " (no bounded interval)" if s.get("share_lost_note") else ""
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}] ({which})" if ci else unbounded
            row.append("-" if share is None else f"{share:.3f}{interval}")
        if dp:
            f = s.get("fraction_of_baseline") or {}
            row.append(", ".join(f"{arm} {v['past_window']:.3f}" for arm, v in f.items()) or "-")
        if local:
            row += [_number(s.get("local_loss_mean"), ".4f"), f"{_number(s.get('bonus'), '+.4f')} "
                    f"{_interval(s.get('bonus_ci95'), '')}".strip()]  # fmt: skip
        if accuracy:
            hardest = s.get("accuracy_hardest") or {}
            row.append(
                ", ".join(
                    f"{arm} {a[0]:.3f}" + (f" (hardest {hardest[arm][0]:.3f})" if arm in hardest else "")
                    for arm, a in (s.get("accuracy") or {}).items()
                )
                or "-"
            )
        if drift:
            moved = "yes" if s.get("drift") else "no"
            tested = f"{moved}, {s['test']}, p = {s['p_holm']:.3g}" if s.get("p_holm") is not None else s["test"]
            row.append(tested)
        table.add_row(*row)
    return table


def _number(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def fit_lines(res: dict[str, Any]) -> list[str]:
    """The fits of the gap against scale, in words."""
    lines = []
    for key, what in (("fit", "all sizes"), ("fit_from_160m", "from 160m up")):
        f = res.get(key)
        if f:
            how = "weighted by each size's standard error" if f["weighted"] else "unweighted (a size has one pair)"
            lines.append(
                f"fit over {what} ({f['n_points']} sizes, {how}): gap = {f['intercept']:+.4f} "
                f"{f['slope']:+.4f} · log10(params), slope 95% CI [{f['slope_ci95'][0]:+.4f}, "
                f"{f['slope_ci95'][1]:+.4f}], R² {f['r_squared']:.3f}"
            )
    return lines


def pages(path: str) -> Iterator[dict[str, Any]]:
    """Every item of a paged list, following next_cursor."""
    cursor = None
    while True:
        page = _call("GET", path, params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        yield from page["items"]
        if not (cursor := page["next_cursor"]):
            return


@click.group()
def sweep() -> None:
    """Scaling sweeps on the control plane."""


def request_body(request_file: str | None, preset: str | None, name: str | None = None) -> dict[str, Any]:
    """A sweep request from a JSON file and/or a preset name (the file's fields override the preset's)."""
    if not (request_file or preset):
        raise click.UsageError("give a REQUEST_FILE, a --preset, or both")
    body: dict[str, Any] = {}
    if request_file:
        try:
            body = json.loads(Path(request_file).read_text())
        except json.JSONDecodeError as e:
            raise click.ClickException(f"{request_file} is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise click.ClickException(f"{request_file}: a sweep request is a JSON object")
    body.update({k: v for k, v in {"preset": preset, "name": name}.items() if v})
    return body


PRESET_HELP = "a named sweep (`myopia presets`); the file's fields override it"


@sweep.command("plan")
@click.argument("request_file", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--preset", help=PRESET_HELP)
@click.option(
    "--profile", help="resource profile of cluster/resources.yaml (default: MYOPIA_RESOURCE_PROFILE, as the server)"
)
def sweep_plan(request_file: str | None, preset: str | None, profile: str | None) -> None:
    """Print the runs a sweep request plans to, as JSON {"runs": [RunSpec, ...]}, without a server: the specs its
    jobs get (the control plane adds each run's name and MLflow tracking)."""
    from pydantic import ValidationError

    from services.errors import InvalidRequest
    from services.planner import SweepRequest, plan
    from services.settings import Settings
    from trainers.spec import error_path

    body = request_body(request_file, preset)
    body.setdefault("name", body.get("preset") or "plan")
    try:
        profile = profile or Settings().resource_profile  # the server's rule: what it stores is what this prints
        pairs = plan(SweepRequest.model_validate(body), profile=profile)
    except ValidationError as e:
        raise click.ClickException("; ".join(f"{error_path(err)}: {err['msg']}" for err in e.errors())) from None
    except InvalidRequest as e:
        raise click.ClickException(str(e)) from None
    runs = [spec.model_dump(mode="json") for p in pairs for spec in p.runs.values()]
    click.echo(json.dumps({"runs": runs}, indent=1))


@sweep.command("submit")
@click.argument("request_file", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--preset", help=PRESET_HELP)
@click.option("--name", help="override the request's name")
@click.option("--key", help="Idempotency-Key: submitting the same key again returns the same sweep")
@click.option("--wait", is_flag=True, help="follow the sweep until it ends, then print the gap table")
def sweep_submit(request_file: str | None, preset: str | None, name: str | None, key: str | None, wait: bool) -> None:
    """Submit the sweep request in REQUEST_FILE (JSON) and/or a --preset."""
    s = submit(Api.from_env(), request_body(request_file, preset, name), key)
    if wait:
        s = follow(Api.from_env(), s["id"])
        console.print(runs_table(s))
        console.print(results_table(_call("GET", f"/v1/sweeps/{s['id']}/results").json()))


def submit(api: Api, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    s = api.call("POST", "/v1/sweeps", json=body, headers={"Idempotency-Key": key} if key else {}).json()
    console.print(f"sweep {s['id']}: {len(s['runs'])} runs, {s['status']}")
    return s


def follow(api: Api, *sweep_ids: str, every: float = 3.0) -> dict[str, Any]:
    """Poll the sweeps until all have ended, with a bar per run (its steps, from the job's progress); returns the
    last sweep's final state."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    bars: dict[str, Any] = {}
    with Progress(*columns, console=console) as progress:
        while True:
            sweeps = [api.call("GET", f"/v1/sweeps/{i}").json() for i in sweep_ids]
            for r in (r for s in sweeps for r in s["runs"]):
                p = r.get("progress") or {}
                steps = p.get("steps") or (r["result"] or {}).get("steps") or 1
                done = steps if r["status"] == "succeeded" else p.get("step", 0)
                info = r["status"] + (f"  loss {p['loss']:.3f}" if "loss" in p and r["status"] == "running" else "")
                if r["id"] not in bars:
                    bars[r["id"]] = progress.add_task(f"{r['size']:>5} s{r['seed']} {r['arm']:<7}", info="")
                progress.update(bars[r["id"]], completed=done, total=steps, info=info)
            if all(s["status"] in TERMINAL for s in sweeps):
                return sweeps[-1]
            time.sleep(every)


@sweep.command("list")
def sweep_list() -> None:
    table = Table("sweep", "name", "status", "runs", "created (UTC)")
    for s in pages("/v1/sweeps"):
        runs = ", ".join(f"{n} {status}" for status, n in sorted(s["runs_by_status"].items()))
        table.add_row(s["id"], s["name"], s["status"], runs, s["created_at"][:19])
    console.print(table)


@sweep.command("show")
@click.argument("sweep_id")
def sweep_show(sweep_id: str) -> None:
    console.print(runs_table(_call("GET", f"/v1/sweeps/{sweep_id}").json()))


@sweep.command("cancel")
@click.argument("sweep_id")
def sweep_cancel(sweep_id: str) -> None:
    console.print(f"sweep {sweep_id}: {_call('POST', f'/v1/sweeps/{sweep_id}/cancel').json()['status']}")


@sweep.command("results")
@click.argument("sweep_id")
@click.option("--png", type=click.Path(dir_okay=False), help="also save the plot here")
def sweep_results(sweep_id: str, png: str | None) -> None:
    res = _call("GET", f"/v1/sweeps/{sweep_id}/results").json()
    console.print(results_table(res))
    for line in fit_lines(res):
        console.print(line)
    if png:
        Path(png).write_bytes(_call("GET", f"/v1/sweeps/{sweep_id}/results.png").content)
        console.print(f"plot: {png}")


@click.group()
def run() -> None:
    """Single runs of a sweep."""


@run.command("show")
@click.argument("run_id")
def run_show(run_id: str) -> None:
    r = _call("GET", f"/v1/runs/{run_id}").json()
    console.print(f"{r['id']} ({r['arm']}, {r['size']}, seed {r['seed']}): {r['status']}, attempt {r['attempt']}")
    for e in r["events"]:
        console.print(f"  {e['at'][:19]}  attempt {e['attempt']}  {e['status']}  {e['message'] or ''}")
    if r["error"]:
        console.print(f"error: {r['error']}")


@run.command("logs")
@click.argument("run_id")
def run_logs(run_id: str) -> None:
    click.echo(_call("GET", f"/v1/runs/{run_id}/logs").text)


@run.command("cancel")
@click.argument("run_id")
def run_cancel(run_id: str) -> None:
    console.print(f"run {run_id}: {_call('POST', f'/v1/runs/{run_id}/cancel').json()['status']}")


@run.command("retry")
@click.argument("run_id")
def run_retry(run_id: str) -> None:
    r = _call("POST", f"/v1/runs/{run_id}/retry").json()
    console.print(f"run {run_id}: {r['status']} (attempt {r['attempt']})")


@click.group()
def schedule() -> None:
    """Sweeps rerun on a cron schedule (UTC)."""


@schedule.command("add")
@click.argument("name")
@click.option("--cron", required=True, help="five-field cron expression, UTC, e.g. '0 3 * * 1'")
@click.option(
    "--template",
    "template_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="a sweep request (JSON), as for `myopia sweep submit`",
)
def schedule_add(name: str, cron: str, template_file: str) -> None:
    try:
        template = json.loads(Path(template_file).read_text())
    except json.JSONDecodeError as e:
        raise click.ClickException(f"{template_file} is not JSON: {e}") from None
    s = _call("POST", "/v1/schedules", json={"name": name, "cron": cron, "template": template}).json()
    console.print(f"schedule {s['id']}: {s['cron']}")


@schedule.command("list")
def schedule_list() -> None:
    table = Table("schedule", "name", "cron", "last fired", "last sweep")
    for s in pages("/v1/schedules"):
        table.add_row(s["id"], s["name"], s["cron"], (s["last_fired_at"] or "-")[:19], s["last_sweep_id"] or "-")
    console.print(table)


@schedule.command("delete")
@click.argument("schedule_id")
def schedule_delete(schedule_id: str) -> None:
    _call("DELETE", f"/v1/schedules/{schedule_id}")
    console.print(f"schedule {schedule_id} deleted")
