"""`dedupd status` on a terminal: the status document as rich tables.

Only for a terminal: a pipe or a file (and --json) keeps status.render's plain
text, which scripts read, byte for byte. Imported only then.

One row per volume: its name, kind and mode; its state and what it is doing;
its passes (done/started, failures, when the last one ended and how long it
took, when the next starts); its counters (files seen, read, skipped until
they settle, deduped) and rates; bytes reclaimed. Then the backup jobs, the next events and
the last errors, each as a table of its own.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from dedupd.commands.status import ago, when
from dedupd.output import human_bytes, show_path

STATE_STYLE = {"idle": "green", "scanning": "cyan", "hashing": "cyan", "deduping": "yellow",
               "paused": "magenta"}


def show(doc: dict[str, Any], console: Console) -> None:
    console.print(view(doc))


def view(doc: dict[str, Any]) -> Group:
    parts: list[RenderableType] = [Text.assemble(
        ("dedupd ", "bold"), (str(doc["version"]), "bold"),
        f"  pid {doc['pid']}  ", (doc["state"], _state_style(doc["state"])),
        f"  up {ago(doc['uptime'])}  ",
        (human_bytes(doc["bytes_reclaimed"]), "bold"), " reclaimed",
        f"  {doc['reloads']} reloads" if doc.get("reloads") else "")]
    parts.append(_volumes(doc) if doc["volumes"] else Text("no volumes", "dim"))
    if doc["backups"]:
        parts.append(_backups(doc))
    if doc["next_events"]:
        nxt = Table(title="next", title_justify="left", box=None, show_header=False)
        for e in doc["next_events"][:5]:
            nxt.add_row(when(e["at"]), Text(show_path(e["what"])))
        parts.append(nxt)
    if doc["last_errors"]:
        parts.append(_errors(doc))
    return Group(*parts)


def _volumes(doc: dict[str, Any]) -> Table:
    t = Table(title_justify="left", expand=False)
    for name in ("VOLUME", "STATE", "PASSES", "COUNTERS", "RATE", "RECLAIMED"):
        # what the state says it is doing wraps; the numbers stay on their lines
        t.add_column(name, overflow="fold", no_wrap=name != "STATE",
                     min_width=12 if name == "STATE" else None,
                     justify="right" if name in ("RATE", "RECLAIMED") else "left")
    for v in doc["volumes"].values():
        state = "paused" if v["paused"] else v["state"]
        head = Text(state, _state_style(state))
        if v["queue"]["rescan_requested"]:
            head.append(" +rescan", "yellow")
        c = v["counters"]
        counters = Text(f"{c.get('files_seen', 0):,} seen\n{c.get('files_hashed', 0):,} read "
                        f"({human_bytes(c.get('bytes_read', 0))})\n")
        counters.append(f"{c.get('files_pending', 0):,} skipped (settling)\n",
                        "yellow" if c.get("files_pending") else "")
        counters.append(f"{c.get('hits', 0):,} deduped" if v["mode"] == "apply" else
                        f"{c.get('hits', 0):,} would dedupe")
        rate = v["rates"]
        t.add_row(Text.assemble((v["name"], "bold"), f"\n{v['kind']}\n",
                                (v["mode"], "yellow" if v["mode"] != "apply" else "")),
                  Text.assemble(head, "\n", (show_path(v["doing"]), "dim")),
                  _passes(v),
                  counters,
                  f"{rate['files_per_s']:,.0f} files/s\n{human_bytes(rate['bytes_per_s'])}/s",
                  human_bytes(v["bytes_reclaimed"]))
    return t


def _passes(v: dict[str, Any]) -> Text:
    p = v["passes"]
    out = Text(f"{p['completed']}/{p['started']} done")
    if p["failed"]:
        out.append(f", {p['failed']} failed", "red")
    if v["pass_started_at"] is not None:
        out.append(f"\nrunning for {ago(time.time() - v['pass_started_at'])}")
    if v["last_pass_finished_at"] is not None:
        took = v["last_pass_seconds"]
        out.append(f"\nlast {when(v['last_pass_finished_at'])}"
                   + (f" ({took:.1f}s)" if took is not None else ""))
    if v["next_pass_at"] is not None:
        out.append(f"\nnext {when(v['next_pass_at'])}")
    return out


def _backups(doc: dict[str, Any]) -> Table:
    t = Table("BACKUP", "SCHEDULE", "STATE", "LAST RUN", "NEXT RUN", "RUNS", "LAST RESULT")
    for j in doc["backups"].values():
        result = j["last_result"] or "-"
        t.add_row(Text(j["name"], "bold"), Text(j["schedule"]), Text(j["state"]),
                  when(j["last_run_at"]),
                  when(j["next_run_at"]), f"{j['runs']} ({j['failures']} failed)",
                  Text(show_path(result), "red" if result.startswith("failed") else ""))
    return t


def _errors(doc: dict[str, Any]) -> Table:
    t = Table("TIME", "WHERE", "PATH", "ERROR", title="last errors", title_justify="left")
    for e in doc["last_errors"][-10:]:
        # names and messages are Text, never markup: a file named "x[/]y" is text
        t.add_row(when(e["time"]), Text(str(e["where"])), Text(show_path(e.get("path") or "")),
                  Text(show_path(str(e["error"])), "red"))
    return t


def _state_style(state: str) -> str:
    return STATE_STYLE.get(state, "bold")
