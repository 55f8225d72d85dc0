"""
The one-command demo (``make demo``): the nightly catalogue example, end to end, on this machine.

1. Starts the offline FireRed emulator (or, with ``FIRERED_API_KEY`` set, uses the real gateway).
2. Prepares an isolated Airflow home in ``.airflow-demo/`` (SQLite) and passes the ``firered_default``
   connection and the example's Variables through the environment, as an admin would set them:
   ``firered_catalogue_allowed_prefixes`` lists the output folder (and a manifest's folder), the only
   places a run's ``output_root`` and ``manifest`` params may name. Nothing is written elsewhere.
3. Runs ``firered_catalogue_reedit`` with ``airflow dags test`` and those params: the catalogue is
   split into batches, each batch task submits its SKUs, waits deferred in the trigger and downloads
   the images; SKUs unchanged since an earlier demo run are copied from it instead of being edited
   again.
4. Prints one line per SKU from the run's ``summary.json``, the run folder
   (``demo-output/<date>T<time>Z/``), the contact sheet to open in a browser (``index.html``) and
   its page in Airflow's UI (the FireRed plugin's, for each batch task), with the command that
   starts the UI on the demo's Airflow home.

With the emulator, the input images live on its CDN, which stops with the demo: the demo keeps a
copy of each in its batch folder (``_inputs/``) and writes the contact sheet again, so that the
sheet (the file and the page) still shows them afterwards. The catalogue's review step is off (the
``review`` param's default): ``airflow dags test`` would wait for a person's answer.

Exits non-zero if anything fails, and stops every process it started.

Environment (all optional):

* ``FIRERED_API_KEY``: use the real gateway with this key (each SKU is one paid edit).
* ``FIRERED_GATEWAY_URL``: the gateway root, when it is not the default one.
* ``FIRERED_MANIFEST``: a catalogue manifest (CSV or JSON: ``sku``, ``image_url``, ``prompt``) of
  public image URLs; with a key and no manifest, one SKU of the reference's sample image is edited.
* ``FIRERED_DEMO_HOME``, ``FIRERED_DEMO_OUTPUT``: the Airflow home and the output folder
  (``.airflow-demo/`` and ``demo-output/`` in the repository by default).
* ``FIRERED_BATCH_SIZE``: SKUs per batch task (2 with the emulator, so its five SKUs make three
  batches; the DAG's default, 500, with a key).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import urlopen

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO / "example_dags"
SAMPLE_MANIFEST = DAGS_FOLDER / "firered_catalogue_manifest.csv"
#: The throwaway Airflow home and the output folder; the environment may move them (the tests do).
HOME = Path(os.environ.get("FIRERED_DEMO_HOME") or REPO / ".airflow-demo").resolve()
OUTPUT_ROOT = Path(os.environ.get("FIRERED_DEMO_OUTPUT") or REPO / "demo-output").resolve()
DAG_ID = "firered_catalogue_reedit"
#: The Variable (as an environment variable) listing where a run's path params may point.
ALLOWED_PREFIXES = "AIRFLOW_VAR_FIRERED_CATALOGUE_ALLOWED_PREFIXES"
EDIT_TASK_ID = "edit_batch"
#: The sample input of the FireRed reference documentation: the default image with a real key.
REFERENCE_IMAGE = "https://pub-582b7213209642b9b995c96c95a30381.r2.dev/f1.png"

#: Where ``airflow api-server`` listens by default: the demo prints the contact sheet's page there.
UI_URL = "http://localhost:8080"
#: The largest input image copied from the emulator.
MAX_INPUT_BYTES = 20 * 1024 * 1024

_STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)")
_DEFERRED = re.compile(r"\[DAG TEST\] running trigger in line")
_ENDED = re.compile(r"\[DAG TEST\] end task task_id=(\S+) map_index=(-?\d+)")


class DemoError(Exception):
    """A failure the demo explains in one message."""


def say(message: str = "", *, indent: int = 4) -> None:
    print((" " * indent + message) if message else "", flush=True)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (shorter lines), else absolute."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def step(number: int, total: int, message: str) -> None:
    print(f"\n==> [{number}/{total}] {message}", flush=True)


# -- processes ------------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM the process group started for ``proc``, then SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything the process left in its group


def _pump(stream: IO[str], lines: queue.Queue[str | None], log: IO[str]) -> None:
    """Copy a child's output to its log and to ``lines`` (so the pipe never fills up)."""
    for line in stream:
        log.write(line)
        log.flush()
        lines.put(line)
    lines.put(None)


@contextlib.contextmanager
def streamed(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None, *, stderr_to_log: bool = False
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str | None]]]:
    """
    Start ``argv`` in a session of its own, its output copied to ``log_path`` and to a queue of lines
    (``None`` once it closes its output); the whole process group is stopped on exit.

    :param stderr_to_log: send stderr to the log only, so the queue holds stdout alone.
    """
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log if stderr_to_log else subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, lines, log), daemon=True).start()
            yield proc, lines
        finally:
            stop_process(proc)


@contextlib.contextmanager
def emulator(log_path: Path) -> Iterator[dict[str, Any]]:
    """Start ``python -m airflow_provider_firered.emulator``; yield its first line (URLs, samples)."""
    # Imported here: with a real key the demo runs without the emulator extra (Pillow).
    from airflow_provider_firered.emulator.process import EmulatorStartError, start_emulator_process

    timings = ("--queued-seconds", "1", "--processing-seconds", "3")
    # The sample images' URLs are part of what an edit depends on: serving them on the port of the
    # last demo lets a second demo reuse the first one's edits instead of editing them again.
    port_file = OUTPUT_ROOT / ".demo-cdn-port"
    saved = port_file.read_text().strip() if port_file.is_file() else ""
    try:
        try:
            if not saved.isdigit():
                raise EmulatorStartError("no saved port")
            process = start_emulator_process(*timings, "--cdn-port", saved, log_path=log_path)
        except EmulatorStartError:  # the port is taken: any free port will do
            process = start_emulator_process(*timings, log_path=log_path)
    except EmulatorStartError as err:
        raise DemoError(str(err)) from None
    with process:
        port = urlsplit(str(process.info.get("cdn_url"))).port
        if port:
            port_file.write_text(str(port))
        yield process.info


# -- configuration --------------------------------------------------------------------------------


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The manifest's rows (the DAG parses it again; this is for the progress lines and checks)."""
    text = path.read_text(encoding="utf-8")
    rows = json.loads(text) if path.suffix.lower() == ".json" else list(csv.DictReader(text.splitlines()))
    return [{k: str(v).strip() for k, v in row.items() if k} for row in rows]


def base_url_for(sample_images: list[str], rows: list[dict[str, str]]) -> str:
    """The emulator's sample folder, after checking it serves every image the manifest names."""
    if not sample_images:
        raise DemoError("the emulator announced no sample images")
    base = sample_images[0].rsplit("/", 1)[0] + "/"
    served = {url.rsplit("/", 1)[-1] for url in sample_images}
    missing = [r["image_url"] for r in rows if "://" not in r["image_url"] and r["image_url"] not in served]
    if missing:
        raise DemoError(
            f"the emulator serves {sorted(served)}, not {missing} named by {SAMPLE_MANIFEST.name}"
        )
    return base


def airflow_env(extra: dict[str, str]) -> dict[str, str]:
    """An environment with no Airflow settings from the caller's shell: only the demo's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME / 'airflow.db'}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def run_quiet(argv: list[str], env: dict[str, str], log_path: Path, timeout: float) -> None:
    """Run a command to completion, its output in ``log_path``; raise with the log's tail if it fails."""
    with log_path.open("w") as log:
        try:
            code = subprocess.run(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            raise DemoError(f"{' '.join(argv[1:3])} took over {timeout:.0f} s (log: {log_path})") from None
    if code != 0:
        raise DemoError(f"{' '.join(argv[1:3])} exited {code}:\n{tail(log_path)}")


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the run --------------------------------------------------------------------------------------


def task_state(task_id: str, map_index: int) -> str:
    """The state ``airflow dags test`` recorded for a task (the demo's own throwaway SQLite DB)."""
    try:
        conn = sqlite3.connect(f"file:{HOME / 'airflow.db'}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(
                "SELECT state FROM task_instance WHERE dag_id = ? AND task_id = ? AND map_index = ?"
                " ORDER BY start_date DESC LIMIT 1",
                (DAG_ID, task_id, map_index),
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return "?"
    return str(row[0]) if row and row[0] else "?"


def run_dag(
    env: dict[str, str], logical_date: str, conf: dict[str, Any], timeout: float
) -> tuple[int, set[int]]:
    """
    Run the DAG with ``airflow dags test``, printing a line per task.

    :return: the command's exit code and the map indexes of the batch tasks that waited deferred.
    """
    log_path = HOME / "dags-test.log"
    argv = [
        str(Path(sys.executable).parent / "airflow"),
        "dags",
        "test",
        DAG_ID,
        logical_date,
        "--conf",
        json.dumps(conf),
    ]
    say(f"full log: {shown(log_path)}")
    deferred: set[int] = set()
    with streamed(argv, log_path, env) as (proc, lines):
        started = last_output = time.monotonic()
        current: tuple[str, int] | None = None
        while True:
            if time.monotonic() - started > timeout:
                raise DemoError(f"the DAG run took over {timeout:.0f} s (log: {log_path})")
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if time.monotonic() - last_output > 20:
                    say(f"... still working ({time.monotonic() - started:.0f} s)")
                    last_output = time.monotonic()
                continue
            if line is None:
                break
            if match := _STARTING.search(line):
                current = (match[1], int(match[2]))
            elif _DEFERRED.search(line) and current:
                if current[0] == EDIT_TASK_ID:
                    deferred.add(current[1])
                say(f"{label(current):<28} submitted; waiting deferred in the trigger")
                last_output = time.monotonic()
            elif match := _ENDED.search(line):
                ended = (match[1], int(match[2]))
                say(f"{label(ended):<28} {task_state(*ended)}")
                last_output = time.monotonic()
        code = proc.wait(timeout=30)
    return code, deferred


def run_id_of_last_run() -> str | None:
    """The run id of the DAG's last run in the demo's throwaway SQLite DB."""
    try:
        conn = sqlite3.connect(f"file:{HOME / 'airflow.db'}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def keep_inputs(run_folder: Path, run_id: str) -> int:
    """
    Keep a copy of each input image (served by the emulator) in its batch folder, then write the
    contact sheet again, which shows the copies: the emulator stops with the demo, the copies stay.

    :return: how many copies were kept.
    """
    from airflow_provider_firered.batch.contact_sheet import keep_input_copy, write_contact_sheet
    from airflow_provider_firered.batch.run_results import read_run

    report = read_run(run_folder)
    kept: set[tuple[str, str]] = set()
    for item in report.items:
        for url in item.images:
            if (item.batch, url) in kept or urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
                continue
            with urlopen(url, timeout=30) as answer:  # the local emulator's http URL
                data = answer.read(MAX_INPUT_BYTES + 1)
            if len(data) > MAX_INPUT_BYTES:
                continue
            keep_input_copy(run_folder / item.batch, url, data)
            kept.add((item.batch, url))
    write_contact_sheet(report, title=f"{DAG_ID}: {run_id}")  # the DAG's own title
    return len(kept)


def ui_lines(run_id: str, batches: list[str]) -> list[str]:
    """The contact sheet's page in Airflow's UI for each batch task, and how to start the UI."""
    from airflow_provider_firered.plugins.links import sheet_path

    indexes = [int(name.rsplit("-", 1)[-1]) for name in batches] or [0]
    airflow = Path(sys.executable).parent / "airflow"
    pad = " " * 15
    passwords = f"{shown(HOME)}/simple_auth_manager_passwords.json.generated"
    lines = [f"In Airflow:    {UI_URL}{sheet_path(DAG_ID, run_id, EDIT_TASK_ID, indexes[0])}"]
    if len(indexes) > 1:
        lines.append(f"{pad}(batch-{indexes[0]:04d}; map_index={indexes[1]}..{indexes[-1]} for the others)")
    lines += [
        f"{pad}once the UI runs: AIRFLOW_HOME={shown(HOME)} {shown(airflow)} api-server --port 8080",
        f"{pad}signed in as admin (password: {passwords})",
    ]
    return lines


def label(task: tuple[str, int]) -> str:
    """A task as the demo names it: ``edit_batch [batch-0001]`` for a batch."""
    task_id, index = task
    return task_id if index < 0 else f"{task_id} [batch-{index:04d}]"


def check_image(path: Path) -> str:
    """The image format of ``path`` (Pillow decodes it), or a reason it is not a valid image."""
    if not path.is_file():
        return "missing"
    try:
        from PIL import Image
    except ImportError:  # the emulator extra brings Pillow; without it, trust a non-empty file
        return "ok" if path.stat().st_size else "empty"
    try:
        with Image.open(path) as image:
            image.verify()
            return str(image.format)
    except Exception as err:
        return f"not an image ({type(err).__name__})"


def report(summary: dict[str, Any], run_folder: Path) -> bool:
    """Print the SKU table (files relative to ``run_folder``); return whether every SKU has valid images."""
    ok = not summary.get("failed") and not summary.get("problems")
    say(f"{'SKU':<16} {'outcome':<8} output file (in {run_folder.name}/) or error")
    say(f"{'-' * 16} {'-' * 8} {'-' * 60}")
    for item in summary.get("items") or []:
        outcome = str(item.get("outcome"))
        if outcome == "failed":
            say(f"{item['key']:<16} {outcome:<8} {item.get('status') or ''}: {item.get('error') or ''}")
            continue
        outputs = [str(output) for output in item.get("outputs") or []]
        ok = ok and bool(outputs)
        for i, output in enumerate(outputs or ["-"]):
            shown_output = output
            if output != "-":
                kind = check_image(Path(output))
                ok = ok and kind not in ("missing", "empty") and not kind.startswith("not an image")
                with contextlib.suppress(ValueError):
                    shown_output = str(Path(output).relative_to(run_folder))
                shown_output = f"{shown_output}  ({kind})"
            say(f"{item['key'] if i == 0 else '':<16} {outcome if i == 0 else '':<8} {shown_output}")
    for problem in summary.get("problems") or []:
        say(f"problem: {problem}")
    return ok


def run_folder_of(logical: datetime) -> Path:
    """The run folder the DAG uses for a manual run (``airflow dags test``) of this logical date."""
    return OUTPUT_ROOT / logical.strftime("%Y-%m-%dT%H%M%SZ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed for the DAG run")
    args = parser.parse_args(argv)

    api_key = os.environ.get("FIRERED_API_KEY", "").strip()
    real = bool(api_key)
    total = 4
    started = time.monotonic()
    if HOME.is_dir() and any(HOME.iterdir()) and not (HOME / "airflow.db").exists():
        raise DemoError(f"{HOME} is not empty and holds no demo database: not deleting it")
    shutil.rmtree(HOME, ignore_errors=True)  # a fresh, throwaway Airflow home each time
    HOME.mkdir(parents=True)
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)

    with contextlib.ExitStack() as stack:
        if real:
            step(1, total, "Using the real FireRed gateway (FIRERED_API_KEY is set)")
            manifest = Path(os.environ["FIRERED_MANIFEST"]) if os.environ.get("FIRERED_MANIFEST") else None
            if manifest is None:
                manifest = HOME / "manifest.csv"
                manifest.write_text(
                    "sku,image_url,prompt\n"
                    f'DEMO-001,{REFERENCE_IMAGE},"Add a magical aurora borealis to the sky"\n',
                    encoding="utf-8",
                )
            rows = read_manifest(manifest)
            say(f"manifest: {manifest} ({len(rows)} SKU(s); each is one paid edit)")
            conn = {"conn_type": "firered", "password": api_key}
            if os.environ.get("FIRERED_GATEWAY_URL"):
                conn["host"] = os.environ["FIRERED_GATEWAY_URL"]
            conf: dict[str, Any] = {"poll_interval": 10, "manifest": str(manifest.resolve())}
            extra = {ALLOWED_PREFIXES: json.dumps([str(OUTPUT_ROOT), str(manifest.resolve().parent)])}
            batch_size = os.environ.get("FIRERED_BATCH_SIZE", "")
            timeout = args.timeout or 3600
        else:
            step(1, total, "Starting the offline FireRed emulator")
            rows = read_manifest(SAMPLE_MANIFEST)
            info = stack.enter_context(emulator(HOME / "emulator.log"))
            base = base_url_for(list(info.get("sample_images") or []), rows)
            say(f"gateway {info['gateway_url']}, CDN {info['cdn_url']}")
            say(f"{len(rows)} SKU(s) in {shown(SAMPLE_MANIFEST)}, images from {base}")
            conn = {"conn_type": "firered", "host": info["gateway_url"], "password": "demo-key"}
            extra = {
                "AIRFLOW_VAR_FIRERED_IMAGE_BASE_URL": base,
                ALLOWED_PREFIXES: json.dumps([str(OUTPUT_ROOT)]),
            }
            conf = {"poll_interval": 1}  # the sample manifest: the DAG's default
            batch_size = os.environ.get("FIRERED_BATCH_SIZE", "2")
            timeout = args.timeout or 600
        if batch_size:
            extra["AIRFLOW_VAR_FIRERED_BATCH_SIZE"] = batch_size
        # A run's param, as a user would pass it: accepted because the Variable above allows it.
        conf["output_root"] = str(OUTPUT_ROOT)
        skus = [row["sku"] for row in rows]
        env = airflow_env({"AIRFLOW_CONN_FIRERED_DEFAULT": json.dumps(conn), **extra})

        step(2, total, f"Preparing an isolated Airflow home: {shown(HOME)}/ (SQLite)")
        airflow = str(Path(sys.executable).parent / "airflow")
        run_quiet([airflow, "db", "migrate"], env, HOME / "db-migrate.log", timeout=300)
        say("metadata database ready")

        step(3, total, f"Running {DAG_ID} with `airflow dags test` (deferrable batches)")
        now = datetime.now(timezone.utc).replace(microsecond=0)
        code, deferred = run_dag(env, now.isoformat(), conf, timeout)

        step(4, total, "Results")
        run_folder = run_folder_of(now)
        summary_path = run_folder / "summary.json"
        if not summary_path.is_file():
            raise DemoError(
                f"airflow dags test exited {code} without a summary:\n{tail(HOME / 'dags-test.log', 40)}"
            )
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        ok = report(summary, run_folder)
        batches = summary.get("batches") or []
        say("")
        say(
            f"{summary.get('edited', 0)} of {len(skus)} SKU(s) edited, {summary.get('reused', 0)} reused "
            f"from an earlier run, {summary.get('failed', 0)} failed; {len(batches)} batch task(s), "
            f"{len(deferred)} waited deferred."
        )
        say(f"Run folder:    {run_folder}")
        say(f"Summary:       {summary_path}")
        # Imported from here on: the provider reads the demo's Airflow home.
        os.environ.update(env)
        run_id = run_id_of_last_run()
        if not real and run_id:
            try:
                kept = keep_inputs(run_folder, run_id)
                say(
                    f"Inputs kept:   {kept} cop(ies) of the emulator's images, in the batch folders' _inputs/"
                )
            except (OSError, ValueError) as err:  # the sheet still names each input's URL
                say(f"Inputs kept:   none ({err}): once the emulator stops, the sheet shows URLs")
        say(f"Contact sheet: {run_folder / 'index.html'}  (open it in a browser)")
        if run_id:
            for line in ui_lines(run_id, [str(b.get("batch")) for b in batches]):
                say(line)
        say(f"Took {time.monotonic() - started:.0f} s.")
        if code != 0 or not ok:
            failed = ", ".join(f["key"] for f in summary.get("failures") or []) or "none"
            raise DemoError(f"the run failed (failed SKUs: {failed}); log: {HOME / 'dags-test.log'}")
        submitting = {int(b["batch"].rsplit("-", 1)[-1]) for b in batches if b.get("edited")}
        if not real and not submitting <= deferred:
            # The emulator's jobs outlast the first status read: every batch that edited must have deferred.
            raise DemoError(f"batches {sorted(submitting - deferred)} never waited deferred (log: {HOME})")
        return 0


if __name__ == "__main__":
    # `kill` or a CI timeout: unwind through the finally blocks so the emulator and Airflow stop too.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        sys.exit(main())
    except DemoError as err:
        print(f"\ndemo failed: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
