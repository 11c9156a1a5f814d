from setuptools import find_packages, setup

setup(
    name="distkeras",
    version="0.1.0",
    description="Data-parallel training of Keras 3 models on Apache Spark",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["distkeras", "distkeras.*"]),
    python_requires=">=3.10",
    install_requires=[
        "pyspark[connect]>=4.0",
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy>=2",
        "cloudpickle>=3",
        "pyarrow>=15",
        "pandas>=2.2,<3",
        "tqdm>=4.66",
    ],
    extras_require={
        "demo": ["mlxtend>=0.23"],
        "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6", "mlxtend>=0.23",
                 "scikit-learn>=1.4", "ruff>=0.5", "matplotlib>=3.8", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29", "tensorboard>=2.16",
                 "mlflow-skinny>=3", "jax[cpu]>=0.4.30", "pyyaml>=6",
                 "venv-pack>=0.2", "setuptools>=65", "wheel>=0.40"],  # test_deploy
        "jax": ["jax>=0.4.30"],
        "torch": ["torch>=2.1"],
        "plots": ["matplotlib>=3.8"],
        "mlflow": ["mlflow-skinny>=3"],
    },
    license="Apache-2.0",
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering"],
)
