"""The optional C helper ``deswm._native``; everything else is in pyproject.toml.

``optional=True``: where it cannot be compiled (no C compiler) the install goes on
without it and deswm uses its pure-Python path (docs/performance.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "deswm._native",
            ["src/deswm/_native.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
