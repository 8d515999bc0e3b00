"""`myopia sweep|run|schedule …`: the REST API from the command line. Every command takes --url and --token (their
defaults: MYOPIA_API_URL, MYOPIA_API_TOKEN) and -o json|table; request files are YAML or JSON."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 140)  # a log or a pipe gets whole table rows
TERMINAL = {"succeeded", "failed", "cancelled"}
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Api:
    """The control plane's REST API; errors become one-line CLI errors."""

    url: str
    token: str | None = None

    @classmethod
    def from_env(cls) -> Api:
        """The command's --url/--token (click fills them from MYOPIA_API_URL/MYOPIA_API_TOKEN); outside a command,
        the environment."""
        ctx = click.get_current_context(silent=True)
        given = (ctx.obj if ctx and isinstance(ctx.obj, dict) else None) or {}
        url = given.get("url") or os.environ.get("MYOPIA_API_URL") or DEFAULT_URL
        token = given.get("token") or os.environ.get("MYOPIA_API_TOKEN")
        token = (token or "").strip() or None  # `$(cat token-file)` keeps no newline, a Secret's env var may
        return cls(url.rstrip("/"), token)

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


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.ensure_object(dict)[param.name] = value
    return value


def client(f: Callable) -> Callable:
    """--url, --token and -o on a command that talks to the control plane."""
    options = (
        click.option("--url", envvar="MYOPIA_API_URL", default=DEFAULT_URL, show_default=True, expose_value=False,
                     callback=_remember, help="the control plane's API (env MYOPIA_API_URL)"),
        click.option("--token", envvar="MYOPIA_API_TOKEN", expose_value=False, callback=_remember,
                     help="its bearer token (env MYOPIA_API_TOKEN)"),
        click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
                     expose_value=False, callback=_remember, help="a table for people, or the API's JSON"),
    )  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def as_json() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and isinstance(ctx.obj, dict) and ctx.obj.get("output") == "json")


def show(data: Any, render: Callable[[Any], Any]) -> None:
    """The API's JSON with -o json, else what `render` makes of it (a table or a line)."""
    if as_json():
        click.echo(json.dumps(data, indent=1))
    else:
        console.print(render(data))


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


def read_request(path: str) -> dict[str, Any]:
    """A request file: YAML or JSON (JSON is read as JSON, so its errors name JSON's positions)."""
    text = Path(path).read_text()
    try:
        body = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if Path(path).suffix == ".json" else "YAML"
        raise click.ClickException(f"{path} is not {kind}: {e}") from None
    if not isinstance(body, dict):
        raise click.ClickException(f"{path}: a request is a mapping of fields, not {type(body).__name__}")
    return body


def request_body(request_file: str | None, preset: str | None, name: str | None = None) -> dict[str, Any]:
    """A sweep request from a YAML/JSON file and/or a preset name (the file's fields override the preset's)."""
    if not (request_file or preset):
        raise click.UsageError("give a REQUEST_FILE, a --preset, or both")
    body = read_request(request_file) if request_file else {}
    body.update({k: v for k, v in {"preset": preset, "name": name}.items() if v})
    return body


PRESET_HELP = "a named sweep (`myopia presets`); the file's fields override it"
REQUEST_FILE = click.argument("request_file", required=False, type=click.Path(exists=True, dir_okay=False))


@sweep.command("plan")
@REQUEST_FILE
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
@REQUEST_FILE
@click.option("--preset", help=PRESET_HELP)
@click.option("--name", help="override the request's name")
@click.option("--key", help="Idempotency-Key: submitting the same key again returns the same sweep")
@click.option("--wait", is_flag=True, help="follow the sweep until it ends, then print the gap table")
@client
def sweep_submit(request_file: str | None, preset: str | None, name: str | None, key: str | None, wait: bool) -> None:
    """Submit the sweep request in REQUEST_FILE (YAML or JSON) and/or a --preset."""
    s = submit(Api.from_env(), request_body(request_file, preset, name), key, quiet=as_json())
    if wait:
        watch(s["id"])
    elif as_json():
        click.echo(json.dumps(s, indent=1))


def submit(api: Api, body: dict[str, Any], key: str | None = None, quiet: bool = False) -> dict[str, Any]:
    s = api.call("POST", "/v1/sweeps", json=body, headers={"Idempotency-Key": key} if key else {}).json()
    if not quiet:
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
    with Progress(*columns, console=console, disable=as_json()) as progress:
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


def watch(sweep_id: str) -> None:
    """Follow a sweep to its end, then its runs and its gap table (with -o json: {"sweep", "results"})."""
    s = follow(Api.from_env(), sweep_id)
    res = _call("GET", f"/v1/sweeps/{sweep_id}/results").json()
    if as_json():
        click.echo(json.dumps({"sweep": s, "results": res}, indent=1))
        return
    console.print(runs_table(s))
    console.print(results_table(res))


@sweep.command("watch")
@click.argument("sweep_id")
@client
def sweep_watch(sweep_id: str) -> None:
    """Follow a sweep already submitted (after `submit` without --wait, or a closed terminal) until it ends, with a
    bar per run, then print its gap table."""
    watch(sweep_id)


@sweep.command("list")
@client
def sweep_list() -> None:
    """Every sweep, newest first, with its runs counted by status."""

    def render(items: list[dict]) -> Table:
        table = Table("sweep", "name", "status", "runs", "created (UTC)")
        for s in items:
            runs = ", ".join(f"{n} {status}" for status, n in sorted(s["runs_by_status"].items()))
            table.add_row(s["id"], s["name"], s["status"], runs, s["created_at"][:19])
        return table

    show(list(pages("/v1/sweeps")), render)


@sweep.command("show")
@click.argument("sweep_id")
@client
def sweep_show(sweep_id: str) -> None:
    """A sweep's runs: size, seed, arm, status, attempt."""
    show(_call("GET", f"/v1/sweeps/{sweep_id}").json(), runs_table)


@sweep.command("cancel")
@click.argument("sweep_id")
@client
def sweep_cancel(sweep_id: str) -> None:
    """Cancel a sweep's unfinished runs (their jobs are stopped); finished runs keep their results."""
    show(_call("POST", f"/v1/sweeps/{sweep_id}/cancel").json(), lambda s: f"sweep {sweep_id}: {s['status']}")


@sweep.command("delete")
@click.argument("sweep_id")
@click.option("--yes", is_flag=True, help="do not ask")
@client
def sweep_delete(sweep_id: str, yes: bool) -> None:
    """Delete an ended sweep for good: its runs, their MLflow runs and checkpoints (cancel it first if it runs)."""
    if not yes:
        click.confirm(f"delete sweep {sweep_id}, its MLflow runs and its checkpoints?", abort=True)

    def render(d: dict) -> str:
        line = f"sweep {sweep_id} deleted: {d['mlflow_runs_deleted']} MLflow runs, {d['checkpoints_deleted']} folders"
        if d["mlflow_runs_not_deleted"]:
            line += f"; MLflow runs left (delete them there): {', '.join(d['mlflow_runs_not_deleted'])}"
        if d["storage_not_reachable"]:
            line += f"; checkpoints not reachable here (remove them there): {', '.join(d['storage_not_reachable'])}"
        return line

    show(_call("DELETE", f"/v1/sweeps/{sweep_id}").json(), render)


@sweep.command("results")
@click.argument("sweep_id")
@click.option("--png", type=click.Path(dir_okay=False), help="also save the plot here")
@client
def sweep_results(sweep_id: str, png: str | None) -> None:
    """The gap table per size (intervals over seeds and held-out sequences) and the fits against scale."""
    res = _call("GET", f"/v1/sweeps/{sweep_id}/results").json()
    if png:
        Path(png).write_bytes(_call("GET", f"/v1/sweeps/{sweep_id}/results.png").content)
    if as_json():
        click.echo(json.dumps(res, indent=1))
        return
    console.print(results_table(res))
    for line in fit_lines(res):
        console.print(line)
    if png:
        console.print(f"plot: {png}")


@click.group()
def run() -> None:
    """Single runs of a sweep."""


@run.command("show")
@click.argument("run_id")
@client
def run_show(run_id: str) -> None:
    """A run's status, attempt, history and error."""

    def render(r: dict) -> str:
        lines = [f"{r['id']} ({r['arm']}, {r['size']}, seed {r['seed']}): {r['status']}, attempt {r['attempt']}"]
        lines += [f"  {e['at'][:19]}  attempt {e['attempt']}  {e['status']}  {e['message'] or ''}" for e in r["events"]]
        return "\n".join(lines + ([f"error: {r['error']}"] if r["error"] else []))

    show(_call("GET", f"/v1/runs/{run_id}").json(), render)


@run.command("logs")
@click.argument("run_id")
@click.option("--tail", type=click.IntRange(1, 2**20), default=64 * 1024, show_default=True,
              help="the last bytes of the log")  # fmt: skip
@click.option("-f", "--follow", "follow_log", is_flag=True, help="keep printing as the log grows, until the run ends")
@client
def run_logs(run_id: str, tail: int, follow_log: bool) -> None:
    """The current attempt's job log (its tail), or with --follow, followed to the run's end."""
    api = Api.from_env()
    attempt = api.call("GET", f"/v1/runs/{run_id}").json()["attempt"]
    r = api.call("GET", f"/v1/runs/{run_id}/logs", params={"tail": tail})
    click.echo(r.text, nl=False)
    at = int(r.headers.get("x-log-size", len(r.content)))
    ended = False
    while follow_log:
        piece = api.call("GET", f"/v1/runs/{run_id}/logs", params={"offset": at, "length": 2**20})
        if piece.content:
            click.echo(piece.content.decode(errors="replace"), nl=False)
            at += len(piece.content)
            continue
        if ended:  # one last read after the run ended: nothing written before its end is lost
            return
        state = api.call("GET", f"/v1/runs/{run_id}").json()
        if state["attempt"] != attempt:  # a new attempt, a new job, a new log
            attempt, at = state["attempt"], 0
            click.echo(f"--- attempt {attempt} ---")
            continue
        ended = state["status"] in TERMINAL
        if not ended:
            time.sleep(2)


@run.command("cancel")
@click.argument("run_id")
@client
def run_cancel(run_id: str) -> None:
    """Cancel one run (its job is stopped)."""
    show(_call("POST", f"/v1/runs/{run_id}/cancel").json(), lambda r: f"run {run_id}: {r['status']}")


@run.command("retry")
@click.argument("run_id")
@client
def run_retry(run_id: str) -> None:
    """Queue a failed or cancelled run again, as a new attempt that resumes from its checkpoint."""
    show(_call("POST", f"/v1/runs/{run_id}/retry").json(),
         lambda r: f"run {run_id}: {r['status']} (attempt {r['attempt']})")  # fmt: skip


@click.group()
def schedule() -> None:
    """Sweeps rerun on a cron schedule (UTC)."""


CRON = "five-field cron expression, UTC, e.g. '0 3 * * 1'"
TEMPLATE = click.option("--template", "template_file", type=click.Path(exists=True, dir_okay=False),
                        help="a sweep request (YAML or JSON), as for `myopia sweep submit`")  # fmt: skip


def _schedule_line(s: dict) -> str:
    return f"schedule {s['id']} ({s['name']}): {s['cron']}" + (" (paused)" if s["paused"] else "")


@schedule.command("add")
@click.argument("name")
@click.option("--cron", required=True, help=CRON)
@TEMPLATE
@click.option("--preset", help=PRESET_HELP)
@client
def schedule_add(name: str, cron: str, template_file: str | None, preset: str | None) -> None:
    """Rerun a sweep request (a --template file and/or a --preset) on a cron schedule."""
    if not (template_file or preset):
        raise click.UsageError("give a --template file, a --preset, or both")
    template = request_body(template_file, preset)
    template.setdefault("name", name)
    show(_call("POST", "/v1/schedules", json={"name": name, "cron": cron, "template": template}).json(),
         _schedule_line)  # fmt: skip


@schedule.command("list")
@client
def schedule_list() -> None:
    """Every schedule with its cron, when it last fired and its last sweep."""

    def render(items: list[dict]) -> Table:
        table = Table("schedule", "name", "cron", "paused", "last fired", "last sweep")
        for s in items:
            table.add_row(s["id"], s["name"], s["cron"], "yes" if s["paused"] else "no",
                          (s["last_fired_at"] or "-")[:19], s["last_sweep_id"] or "-")  # fmt: skip
        return table

    show(list(pages("/v1/schedules")), render)


@schedule.command("edit")
@click.argument("schedule_id")
@click.option("--name", help="a new name")
@click.option("--cron", help=CRON + "; it fires from its next tick")
@TEMPLATE
@click.option("--preset", help=PRESET_HELP)
@client
def schedule_edit(schedule_id: str, name: str | None, cron: str | None, template_file: str | None,
                  preset: str | None) -> None:  # fmt: skip
    """Change a schedule's name, cron or template (a template that does not plan changes nothing)."""
    body: dict[str, Any] = {k: v for k, v in {"name": name, "cron": cron}.items() if v}
    if template_file or preset:
        body["template"] = request_body(template_file, preset)
    if not body:
        raise click.UsageError("nothing to change: give --name, --cron, --template or --preset")
    show(_call("PATCH", f"/v1/schedules/{schedule_id}", json=body).json(), _schedule_line)


@schedule.command("pause")
@click.argument("schedule_id")
@client
def schedule_pause(schedule_id: str) -> None:
    """Stop a schedule firing, keeping it (resume it later)."""
    show(_call("PATCH", f"/v1/schedules/{schedule_id}", json={"paused": True}).json(), _schedule_line)


@schedule.command("resume")
@click.argument("schedule_id")
@client
def schedule_resume(schedule_id: str) -> None:
    """Let a paused schedule fire again, from its next tick (the ticks it missed are skipped)."""
    show(_call("PATCH", f"/v1/schedules/{schedule_id}", json={"paused": False}).json(), _schedule_line)


@schedule.command("run-now")
@click.argument("schedule_id")
@client
def schedule_run_now(schedule_id: str) -> None:
    """Submit one sweep of the schedule's template now; its cron goes on as before."""
    show(_call("POST", f"/v1/schedules/{schedule_id}/run").json(),
         lambda s: f"sweep {s['id']}: {len(s['runs'])} runs, {s['status']}")  # fmt: skip


@schedule.command("delete")
@click.argument("schedule_id")
@client
def schedule_delete(schedule_id: str) -> None:
    """Delete a schedule (its sweeps stay)."""
    _call("DELETE", f"/v1/schedules/{schedule_id}")
    show({"id": schedule_id, "deleted": True}, lambda _: f"schedule {schedule_id} deleted")
