"""Install arch-objective: `pip install -e .` (core), `.[eval]`, `.[test]`.

The Makefile is the supported set-up: it also installs the two packages whose
metadata is wrong for this stack (seqio and tensorflow-text want the full
`tensorflow` although `tensorflow-cpu` serves them; promptsource declares
Python < 3.10 although it works on 3.11), see `requirements/`.
"""
import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (HERE / "requirements" / name).read_text().splitlines()
  return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


setuptools.setup(
    name="arch-objective",
    version="0.1.0",
    description=(
        "Which language-model architecture and pretraining objective "
        "generalise best zero-shot: a JAX/Flax experiment codebase."),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: OS Independent",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["arch_objective*", "tasks*"])
    + ["arch_objective.gin_files"],
    # The repository's gin/ ships inside the package, so gin search paths work from a wheel.
    package_dir={"arch_objective.gin_files": "gin"},
    package_data={"arch_objective.gin_files": ["*.gin", "*/*.gin", "*/*/*.gin"],
                  "arch_objective.evaluation": ["harness_tasks/*.yaml"]},
    install_requires=_requirements("core.txt"),
    extras_require={
        "eval": _requirements("eval.txt"),
        "test": _requirements("test.txt"),
    },
    entry_points={"console_scripts": [
        "arch-objective=arch_objective.cli:main",
        # lm-eval's own command line with the `arch_objective` model registered
        "arch-objective-lm-eval=arch_objective.evaluation.lm_eval_cli:main",
    ]},
)
