"""A tiny KFP pipeline for the tests (no ``from __future__ import annotations``: kfp reads real types)."""

from kfp import compiler, dsl


@dsl.component(base_image="python:3.11")
def echo(msg: str, n: int, x: float, flag: bool) -> str:
    print("echo", msg, n, x, flag)
    if msg == "fail":
        raise RuntimeError("asked to fail")
    return f"{msg}-{n}"


@dsl.pipeline(name="tiny-pipeline")
def tiny(msg: str = "hi", n: int = 3, x: float = 0.5, flag: bool = False, run_tag: str = ""):
    echo(msg=msg, n=n, x=x, flag=flag)


def compile_to(path) -> None:
    compiler.Compiler().compile(tiny, str(path))
