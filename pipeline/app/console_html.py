"""HTML of the operator console (``console.py``): server-rendered, a little JavaScript, no build.

Every value from the pipeline is escaped; the page holds no secret (the console token is typed
by the operator and kept in the browser's session storage only).
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{background:#1d2430;color:#fff;padding:10px 20px;display:flex;gap:16px;align-items:center;
flex-wrap:wrap}
header h1{font-size:18px;margin:0 12px 0 0}
header label{font-size:12px;opacity:.85}
header input{margin-left:4px;padding:3px 6px;border-radius:4px;border:0}
main{padding:12px 20px;max-width:1200px}
section{background:#fff;border-radius:6px;padding:10px 14px;margin:0 0 12px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:15px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e6e8eb;vertical-align:top}
th{font-size:12px;color:#5a6473;font-weight:600}
.muted{color:#6b7584}.ok{color:#16794a;font-weight:600}.bad{color:#b3261e;font-weight:600}
.state{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600}
.on{background:#d9f2e4;color:#16794a}.off{background:#fde2df;color:#b3261e}
button{padding:4px 12px;border-radius:4px;border:1px solid #888;background:#fff;cursor:pointer}
button.approve{background:#16794a;color:#fff;border-color:#16794a}
button.reject{background:#fff;color:#b3261e;border-color:#b3261e}
button.release{background:#8a5a00;color:#fff;border-color:#8a5a00}
form{display:inline}
.flash{background:#e8f0fe;border-radius:4px;padding:6px 10px;margin-bottom:10px}
code{font-size:12px}
"""

# Refreshes the live part every few seconds (not the name/token fields), copies the operator's
# name and token into a form when it is submitted, and remembers them for this tab.
_JS = """
const keep = (id, store) => {
  const el = document.getElementById(id);
  el.value = store.getItem(id) || el.value;
  el.addEventListener('input', () => store.setItem(id, el.value));
};
keep('op-name', localStorage); keep('op-token', sessionStorage);
document.addEventListener('submit', (ev) => {
  const f = ev.target;
  if (f.dataset.needsName && !document.getElementById('op-name').value.trim()) {
    ev.preventDefault(); alert('Type your name first (recorded in the audit).'); return;
  }
  f.querySelector('[name=by]').value = document.getElementById('op-name').value.trim();
  f.querySelector('[name=token]').value = document.getElementById('op-token').value;
  if (f.dataset.confirm && !confirm(f.dataset.confirm)) ev.preventDefault();
});
setInterval(async () => {
  try {
    const r = await fetch(location.pathname, {cache: 'no-store'});
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    document.getElementById('live').replaceWith(doc.getElementById('live'));
  } catch (e) { /* the next refresh retries */ }
}, 2000);
"""


def _t(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def _dur(seconds: float) -> str:
    s = int(abs(seconds))
    text = f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
    return ("-" if seconds < 0 else "") + text


def _form(action: str, csrf: str, fields: dict[str, str], label: str, **data: str) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items()
    )
    attrs = "".join(f' data-{k.replace("_", "-")}="{escape(v)}"' for k, v in data.items())
    return (
        f'<form method="post" action="/console/{action}"{attrs}>'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<input type="hidden" name="by" value=""><input type="hidden" name="token" value="">'
        f'{hidden}<button class="{action}" type="submit">{escape(label)}</button></form>'
    )


def _table(head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _pause(v: dict[str, Any], csrf: str) -> str:
    if v["paused"] is None:
        return (
            '<section id="pause"><h2>Automatic repair</h2>'
            '<p class="muted">control topic not read yet</p></section>'
        )
    if v["paused"]:
        state = '<span class="state off">PAUSED</span>'
        who = f" by {escape(v['paused_by'])}" + (
            f": {escape(v['paused_reason'])}" if v["paused_reason"] else ""
        )
        button = _form("resume", csrf, {}, "Resume automatic repair")
    else:
        state, who = '<span class="state on">ACTIVE</span>', ""
        button = _form(
            "pause",
            csrf,
            {"reason": "paused from the console"},
            "Pause automatic repair",
            confirm="Pause automatic repair in every process of the group?",
        )
    return (
        f'<section id="pause"><h2>Automatic repair</h2><p>{state}{who} '
        f'<span class="muted">(group {escape(v["group"])})</span></p>{button}</section>'
    )


def _incidents(v: dict[str, Any]) -> str:
    incs = v["incidents"]
    if incs is None:
        body = '<p class="muted">incident tracking is off (incidents.enabled: false)</p>'
    else:
        rows = []
        for inc in incs:
            causes = "<br>".join(
                f"<b>{escape(c['entity'])}</b> {float(c['score']):.2f} "
                f'<span class="muted">{escape("; ".join(c.get("evidence", [])))}</span>'
                for c in inc["causes"]
            )
            rows.append(
                [
                    f"<code>{escape(inc['id'][:8])}</code>",
                    escape(_t(inc["started"])),
                    escape(", ".join(inc["entities"])),
                    escape(", ".join(inc["kinds"])),
                    str(inc["anomaly_count"]),
                    causes,
                ]
            )
        body = _table(
            ["incident", "started", "entities", "kinds", "anomalies", "ranked causes"],
            rows,
            "no open incidents",
        )
    return f'<section id="incidents"><h2>Open incidents</h2>{body}</section>'


def _held(v: dict[str, Any], csrf: str) -> str:
    """Storm holds (fleet-wide) and open escalations (this process), each with Release."""

    def release(ident: str, what: str) -> str:
        return _form(
            "release",
            csrf,
            {"decision_id": ident},
            "Release",
            needs_name="1",
            confirm=f"Release {what}? Automatic repair resumes for it.",
        )

    storms = _table(
        ["storm", "held action", "entities", "still flagged", "escalation", ""],
        [
            [
                escape(f"storm:{s['action']}"),
                f"<b>{escape(s['action'])}</b>",
                f"{s['count']}: {escape(', '.join(s['entities']))}",
                str(s["flagged"]),
                f"<code>{escape(s['id'])}</code>",
                release(s["id"], f"the storm hold on {s['action']} (every held entity)"),
            ]
            for s in v["storms"]
        ],
        "no storm holds any repair",
    )
    escalations = _table(
        ["entity", "rule", "kind", "escalated", "escalation", ""],
        [
            [
                f"<b>{escape(e['entity'])}</b>",
                escape(e["rule"]),
                escape(e["kind"]),
                escape(_t(e["since"])),
                f"<code>{escape(e['id'])}</code>",
                release(e["id"], f"{e['entity']} (its ladder starts over)"),
            ]
            for e in v["escalations"]
        ],
        "no open escalation in this process's partitions",
    )
    note = (
        '<p class="muted">Release = <code>selfheal approve ESCALATION_ID --by NAME</code>; '
        "storms are fleet-wide, escalations are those of the partitions this process reads</p>"
    )
    return (
        f'<section id="held"><h2>Held by selfheal</h2>{note}<h3>Storm holds</h3>{storms}'
        f"<h3>Escalations (no automatic repair until released or recovered)</h3>{escalations}"
        "</section>"
    )


def _pending(v: dict[str, Any], csrf: str) -> str:
    rows = []
    for p in v["pending"]:
        ident = {"decision_id": p["id"]}
        left = p["expires_in_seconds"]
        rows.append(
            [
                f"<b>{escape(p['action'])}</b>",
                escape(p["entity"]),
                escape(p["rule"]),
                escape(p["explanation"]),
                escape(_dur(p["age_seconds"])),
                escape(_dur(left)) if left > 0 else '<span class="bad">expired</span>',
                _form("approve", csrf, ident, "Approve", needs_name="1")
                + " "
                + _form(
                    "reject",
                    csrf,
                    ident,
                    "Reject",
                    needs_name="1",
                    confirm=f"Reject {p['action']} of {p['entity']}?",
                ),
            ]
        )
    table = _table(
        ["action", "entity", "rule", "why", "waiting", "expires in", ""],
        rows,
        "no decision waits for an approval",
    )
    scope = (
        '<p class="muted">decisions of the repair-topic partitions this process executes '
        "(each process of the group lists its own)</p>"
    )
    return f'<section id="approvals"><h2>Pending approvals</h2>{scope}{table}</section>'


def _recent(v: dict[str, Any]) -> str:
    rows = []
    for r in v["recent"]:
        outcome = str(r.get("outcome", ""))
        cls = "ok" if outcome == "ok" else "muted" if outcome in ("started", "skipped") else "bad"
        approved = r.get("approved_by")
        rows.append(
            [
                escape(str(r.get("time", ""))),
                f"<b>{escape(str(r.get('action', '')))}</b>",
                escape(str(r.get("entity", ""))),
                escape(str(r.get("rule", ""))),
                f'<span class="{cls}">{escape(outcome)}</span>',
                escape(str(r.get("executor", ""))),
                escape(str(r.get("detail", ""))[:200]),
                escape(f"approved by {approved}") if approved else "",
            ]
        )
    note = "" if v["following_outcomes"] else '<p class="muted">outcome topic not followed</p>'
    table = _table(
        ["time", "action", "entity", "rule", "outcome", "executor", "detail", ""],
        rows,
        "no repair executed recently",
    )
    return f'<section id="repairs"><h2>Recent repairs</h2>{note}{table}</section>'


def _effectiveness(v: dict[str, Any]) -> str:
    learned = v["effectiveness"]
    if learned is None:
        parts = [
            '<p class="muted">nothing learned yet: no verified repair outcome '
            "(repair_success_ratio has no series)</p>"
        ]
    else:
        parts = []
        for name, samples in learned.items():
            keys = sorted({k for s in samples for k in s["labels"]})
            rows = [
                [escape(str(s["labels"].get(k, ""))) for k in keys] + [f"{s['value']:.3g}"]
                for s in samples
            ]
            parts.append(f"<h3>{escape(name)}</h3>" + _table([*keys, "value"], rows, ""))
    execs = _table(
        ["action", "outcome", "executions"],
        [[escape(e["action"]), escape(e["outcome"]), f"{e['count']:.0f}"] for e in v["executions"]],
        "nothing executed by this process yet",
    )
    return (
        '<section id="effectiveness"><h2>Effectiveness per action</h2>'
        + "".join(parts)
        + f"<h3>Executions by outcome (this process)</h3>{execs}</section>"
    )


def page(v: dict[str, Any], csrf: str, flash: str = "") -> str:
    token_field = (
        '<label>console token<input id="op-token" type="password" autocomplete="off"></label>'
        if v["token_required"]
        else '<input id="op-token" type="hidden" value="">'
    )
    note = f'<div class="flash" id="flash">{escape(flash)}</div>' if flash else ""
    live = (
        f'<div id="live">{_pause(v, csrf)}{_incidents(v)}{_held(v, csrf)}{_pending(v, csrf)}'
        f"{_recent(v)}{_effectiveness(v)}</div>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>selfheal console</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head><body><header><h1>selfheal console</h1>"
        '<label>your name<input id="op-name" autocomplete="username" size="12"></label>'
        f"{token_field}</header><main>{note}{live}</main><script>{_JS}</script></body></html>"
    )


def message(title: str, text: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title></head><body><h1>{escape(title)}</h1><p>{escape(text)}</p>"
        '<p><a href="/console">back to the console</a></p></body></html>'
    )
