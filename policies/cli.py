"""``specreplay policies``: list every policy component, or check one spec string."""
from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

from specreplay.policies.spec import format_value

ROLES = ("block", "input", "verify")


def component_info(cls: type) -> dict[str, Any]:
    """Name, role, summary, knobs with defaults and help of one component class."""
    doc = inspect.getdoc(cls) or ""
    knob_help = {}
    for line in (cls.help or "").splitlines():
        keys, _, text = line.partition(":")
        for key in keys.split(","):
            knob_help[key.strip()] = text.strip()
    first = doc.split("\n\n")[0].replace("\n", " ").replace("``", "")
    summary = first.split(". ")[0].rstrip(".") + "."
    return {"name": cls.name, "role": cls.role, "summary": summary,
            "note": getattr(cls, "note", ""),
            "knobs": [{"name": k, "default": format_value(v), "help": knob_help.get(k, "")}
                      for k, v in cls.params.items()]}


def spec_info(spec: str) -> dict[str, Any]:
    """What a spec string resolves to: canonical spec, probes, ranks, time use."""
    from specreplay.policies.spec import parse_policy
    policy = parse_policy(spec)
    return {"spec": policy.spec(), "components": [c.name for c in policy.components()],
            "notes": [f"{c.name}: {c.note}" for c in policy.components() if getattr(c, "note", "")],
            "probes": list(policy.probes()), "max_rank": policy.max_rank(),
            "uses_time": policy.uses_time()}


def print_listing(infos: list[dict[str, Any]]) -> None:
    for role in ROLES:
        print(f"{role} policies")
        for info in sorted((i for i in infos if i["role"] == role), key=lambda i: i["name"]):
            knobs = ", ".join(f"{k['name']}={k['default']}" for k in info["knobs"]
                              if k["default"] != "")
            print(f"  {info['name']}({knobs})" if knobs else f"  {info['name']}")
            print(f"      {info['summary']}")
            if info.get("note"):
                print(f"      note: {info['note']}.")
            for k in info["knobs"]:
                if k["help"]:
                    print(f"      {k['name']:<18} {k['help']}")
        print()
    print("Compose one block policy, at most one input and one verify policy with '+', "
          "e.g. 'ewma(candidates=8|12|16)+gate(min_prob=0.2)'.")


def run_policies(args: argparse.Namespace) -> int:
    if args.spec:
        info = spec_info(args.spec)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key, value in info.items():
                shown = ", ".join(map(str, value)) if isinstance(value, list) else value
                print(f"{key:<11} {shown if shown != '' else '-'}")
        return 0
    from specreplay.policies import known_policies
    infos = [component_info(cls) for cls in known_policies().values()]
    if args.json:
        print(json.dumps(infos, indent=2))
    else:
        print_listing(infos)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "policies", help="list the policy components and their knobs, or check a spec",
        description="List every policy component (role, knobs, defaults, meaning), or "
                    "resolve one spec string to its canonical form, the oracle probes it "
                    "needs, the highest draft rank it verifies and whether it uses time.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  specreplay policies\n"
               "  specreplay policies --json\n"
               "  specreplay policies --spec 'ewma(candidates=8|16)+recycle(mode=dense)'")
    p.add_argument("--spec", help="a policy spec string to check and print canonically")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_policies)
