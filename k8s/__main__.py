"""`python -m k8s` (`make k8s`): render the cluster deployment into build/k8s/, validate it, check the wiring.

Exit status 0 when every part rendered, every object validated (Kubernetes 1.33 and 1.35, strict) and
every wiring check passed; 1 otherwise, with one line per problem naming the object or setting.
"""

from __future__ import annotations

import argparse
import sys
import time

from driftloop.logs import configure_logging
from k8s import paths
from k8s.render import PARTS, RenderError, Sources, render_part
from k8s.tools import HELM_VERSION, KUBECTL_VERSION, ToolsError, ensure_tools
from k8s.validate import VERSIONS, validate_parts
from k8s.wiring import run_checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m k8s", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="also list what each wiring check verified")
    args = ap.parse_args(argv)
    configure_logging()
    t0 = time.monotonic()
    out = sys.stdout
    try:
        tools = ensure_tools()
    except ToolsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"tools     helm {HELM_VERSION}, kubectl {KUBECTL_VERSION} ({paths.rel(tools['helm'].parent)}/)", file=out)

    src = Sources()
    parts, failed = {}, []
    for name in PARTS:
        try:
            part = render_part(name, src)
        except RenderError as exc:
            failed.append(name)
            print(f"FAILED    render {exc}", file=sys.stderr)
            continue
        parts[name] = part
        where = paths.rel(part.path) if part.path else name
        print(f"rendered  {where:24} {len(part.docs):3} objects  {part.seconds:5.2f} s", file=out)

    t1 = time.monotonic()
    errors, warnings, count = validate_parts(parts)
    for w in warnings:
        print(f"warning   {w}", file=out)
    for e in errors:
        print(f"INVALID   {e}", file=sys.stderr)
    print(
        f"validated {count} objects against Kubernetes {', '.join(VERSIONS)} (strict): {len(errors)} errors, "
        f"{len(warnings)} warnings  {time.monotonic() - t1:5.2f} s",
        file=out,
    )

    problems = 0
    if failed:
        print(f"skipped   wiring checks: {', '.join(failed)} did not render", file=sys.stderr)
    else:
        t2 = time.monotonic()
        for result in run_checks(parts):
            status = "ok" if result.ok else f"{len(result.problems)} problem(s)"
            print(f"wiring    {result.name:10} {status}", file=out)
            if args.verbose:
                for line in result.verified:
                    print(f"            {line}", file=out)
            for p in result.problems:
                print(f"WIRING    {result.name}: {p}", file=sys.stderr)
            problems += len(result.problems)
        print(f"checked   wiring  {time.monotonic() - t2:5.2f} s", file=out)

    ok = not failed and not errors and not problems
    built = f"build/k8s/{{{','.join(PARTS)}}}.yaml"
    print(
        f"{'OK' if ok else 'FAILED'}        {built}  total {time.monotonic() - t0:.1f} s",
        file=out if ok else sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
