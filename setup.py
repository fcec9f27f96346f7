"""Build the compiled kernels of pylstm.

Cython sources live in ``src/``; each becomes an extension module inside the
``pylstm`` package. Compiler directives are set here, once. Set
``PYLSTM_DEBUG=1`` to build with bounds checking and without optimisation.
No ``-march=native`` and no ``-ffast-math``: wheels must run on any x86-64.
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("PYLSTM_DEBUG", "0") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
compile_args += ["-fno-math-errno"]

MODULES = ("_blas", "_kernel")

# Cythonize by path so each module finds its own .pxd in src/ (and cimports
# the others from there), then build the C files as pylstm.<module>.
c_sources = cythonize(
    [f"src/{name}.pyx" for name in MODULES],
    include_path=["src"],
    compiler_directives=directives,
)

setup(
    ext_modules=[
        Extension(
            f"pylstm.{name}",
            [f"src/{name}.c"],
            depends=glob.glob("src/*.h") + glob.glob("src/*.pxd"),
            include_dirs=["src", numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args + ["-pthread"],
            extra_link_args=["-pthread"],
        )
        for name in MODULES
    ],
)
