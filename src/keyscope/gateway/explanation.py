"""What `explain` answers: the steps a request went through, the verdict, and its JSON and text forms (the CLI's
`keyscope explain` and the web explainer print these)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Step:
    """One stage of the request path: `ok` is None for a stage that did not run."""

    name: str
    title: str
    ok: bool | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Explanation:
    method: str
    target: str
    steps: list[Step]
    decision: str  # "forwarded", "refused", "management" or "shadow" (forwarded, though it would be refused)
    status: int | None = None  # the gateway's own status; None when the upstream would answer
    reason: str | None = None
    step: str | None = None
    error_body: Any = None
    error_headers: list[tuple[str, str]] = field(default_factory=list)
    forwarded: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.decision != "refused"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "decision": self.decision,
            "status": self.status,
            "reason": self.reason,
            "step": self.step,
            "errorBody": self.error_body,
            "errorHeaders": [list(pair) for pair in self.error_headers],
            "forwarded": self.forwarded,
            "steps": [
                {"name": s.name, "title": s.title, "ok": s.ok, "summary": s.summary, "details": s.details}
                for s in self.steps
            ],
            "notes": self.notes,
        }

    def to_text(self) -> str:
        lines = [f"{self.method} {self.target}"]
        for number, step in enumerate(self.steps, 1):
            mark = {True: "ok", False: "REFUSED", None: "skipped"}[step.ok]
            lines.append(f"{number}. {step.title}: {mark}: {step.summary}")
            for name, value in step.details.items():
                lines.append(f"     {name}: {_text(value)}")
        if self.decision == "refused":
            lines.append(f"=> refused with {self.status} ({self.reason}, step {self.step})")
            lines.append("   body: " + json.dumps(self.error_body, ensure_ascii=False))
        elif self.decision == "management":
            lines.append("=> answered by the management API, never forwarded")
        elif self.decision == "shadow":
            lines.append(f"=> forwarded in shadow mode, with X-Keyscope-Shadow-Refusal: {self.reason} "
                         f"(an enforcing key would be refused at step {self.step})")
            for name, value in self.forwarded.items():
                lines.append(f"   {name}: {_text(value)}")
        else:
            lines.append("=> forwarded upstream (the upstream's status is the answer)")
            for name, value in self.forwarded.items():
                lines.append(f"   {name}: {_text(value)}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.rstrip("\n") or "(empty)"
    return json.dumps(value, ensure_ascii=False)
