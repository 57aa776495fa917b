"""Packaging for fairseq_awd. Install with `make install` (see README) so that
fairseq-fixed is built against the torch you already have."""

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

# The fast CPU ForgetMult (QRNN). OpenMP threads come from the libgomp torch already loads.
forget_mult_cpu = CppExtension(
    "fairseq_awd._forget_mult_cpu",
    ["fairseq_awd/csrc/forget_mult_cpu.cpp"],
    extra_compile_args=["-O3", "-fopenmp"],
)
# DropConnect masks from a counter-based generator, in parallel (weight drop on the CPU).
drop_connect_cpu = CppExtension(
    "fairseq_awd._drop_connect_cpu",
    ["fairseq_awd/csrc/drop_connect_cpu.cpp"],
    extra_compile_args=["-O3", "-fopenmp"],
)

setup(
    name="fairseq_awd",
    version="0.1.0",
    description="AWD-LSTM / AWD-QRNN language models for fairseq",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["fairseq_awd", "fairseq_awd.*"]),
    package_data={"fairseq_awd": ["csrc/*.cu", "csrc/*.cpp"]},
    ext_modules=[forget_mult_cpu, drop_connect_cpu],
    cmdclass={"build_ext": BuildExtension},
    entry_points={"console_scripts": [
        "fairseq-awd-rescore = fairseq_awd.rescoring.cli:main",
        "fairseq-awd-eval = fairseq_awd.evaluation.cli:cli_main",
    ]},
    install_requires=[
        # No torch pin: CPU and CUDA users install the build they need first.
        "torch>=2.1",
        # fairseq 0.12.2 from PyPI does not import on Python >= 3.11.
        "fairseq-fixed==0.12.3.1",
        # numpy 1 or 2: the numpy-1 names fairseq 0.12 still uses (np.compat.long,
        # np.percentile(interpolation=)) are served by fairseq_awd/numpy_compat.py; its
        # Cython extensions are built against the numpy installed before it (make install).
        "numpy>=1.21.3",
        "sacremoses>=0.0.53",
        "subword-nmt>=0.3.8",
        "sacrebleu>=2.0",
    ],
    extras_require={
        # The CUDA ForgetMult: the cupy built for your CUDA (torch.version.cuda).
        "cuda12": ["cupy-cuda12x"],
        "cuda13": ["cupy-cuda13x"],
        # tests/test_forget_mult_cuda_source.py: NVRTC compiles the CUDA kernel without a
        # GPU or driver (about 70 MB of wheels; make install installs it)
        "cuda-check": ["nvidia-cuda-nvrtc>=13,<14", "cuda-bindings>=13,<14"],
        # scripts/plot_valid_curve.py
        "plot": ["matplotlib>=3.5"],
        "dev": ["pytest>=7", "pytest-xdist>=3", "ruff>=0.4", "matplotlib>=3.5"],
    },
)
