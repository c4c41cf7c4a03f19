# effdet-c: one Makefile for everything.
#   make            build every library, program (build/bin/) and test
#   make test       build and run the test suite (what CI runs)
#   make bench      build and run the CPU benchmarks (prints figures)
#   make bench-data the data pipeline's benchmarks alone
#   make bench-gpu  the GPU benchmarks of issue #8 (tests/bench/gpu.sh; needs a usable CUDA backend)
#   make demo       the README's main job: installs what it needs, builds, trains on a synthetic set
#   make clean      remove build/
#   make SAN=1 test the same with AddressSanitizer + UBSan (objects in build/san/)
# CUDA objects (kernels/cuda/*.cu) build whenever nvcc and cuDNN are found, GPU or not; without them
# the CPU-only programs still build and `--device cuda` answers with a clear error.

SHELL := /bin/bash
CC ?= gcc
ifeq ($(CC),cc)
CC := gcc
endif

BUILD := build
SANFLAGS :=
ifeq ($(SAN),1)
BUILD := build/san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
# AVX2 + FMA where the CPU has them (not -march=native: valgrind cannot run AVX-512 code, and
# the objects must run on every machine of this kind).
ARCH ?= $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo -march=x86-64-v3 || echo -march=x86-64)

BLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_INC := /usr/include/x86_64-linux-gnu/openblas-openmp
PKGS := msgpack libzmq libturbojpeg libuv libcjson libpng
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS ?= -O3 $(ARCH) -g
CFLAGS += -std=gnu11 -fPIC -D_GNU_SOURCE -fno-trapping-math -fno-math-errno -fopenmp -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation -Wshadow -I. -I$(BLAS_INC) \
          $(PKG_CFLAGS) $(SANFLAGS)
LDFLAGS += -fopenmp $(SANFLAGS) -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR)
LDLIBS += $(PKG_LIBS) -lopenblas -lm -lpthread

# ---- CUDA detection (one line each, as llm.c does) -------------------------------------------------
NVCC := $(shell command -v nvcc 2>/dev/null)
CUDA_HOME ?= $(if $(NVCC),$(patsubst %/bin/nvcc,%,$(realpath $(NVCC))),/usr/local/cuda)
HAVE_CUDNN := $(if $(wildcard $(CUDA_HOME)/include/cudnn.h /usr/include/cudnn.h /usr/include/x86_64-linux-gnu/cudnn.h),1,)
HAVE_NCCL := $(if $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h),1,)
ifeq ($(NO_CUDA),1)
NVCC :=
endif
USE_CUDA := $(if $(and $(NVCC),$(HAVE_CUDNN)),1,)
$(info $(if $(NVCC),✓ nvcc found: $(NVCC),✗ nvcc not found: CPU-only build))
$(info $(if $(HAVE_CUDNN),✓ cuDNN found,✗ cuDNN not found: CPU-only build))
$(info $(if $(HAVE_NCCL),✓ NCCL found,✗ NCCL not found: multi-GPU data parallel disabled))

NVCCFLAGS ?= -O3 -g -lineinfo
NVCCFLAGS += -std=c++17 --extended-lambda -I. -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -Xcompiler -fPIC,-Wall,-fvisibility=hidden
# NCCL (kernels/cuda/comm_nccl.cu, multi-GPU data parallel) is compiled in where it is linked.
NVCCFLAGS += $(if $(HAVE_NCCL),-DEFFDET_HAVE_NCCL,)
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcudart

# ---- sources ----------------------------------------------------------------------------------------
# Library code: every .c of these folders except a process's main.c. Each process folder keeps a thin
# main.c over its library, so tests link the library directly.
LIB_DIRS := shared kernels kernels/cpu worker worker/model evaluator loader augment coordinator
LIB_SRCS := $(filter-out %/main.c,$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c)))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
LIB := $(BUILD)/libeffdet.a
# The CUDA backend is a shared library of its own, loaded on demand (kernels/ops_cuda_loader.c),
# so that only --device cuda runs load the CUDA libraries.
CUDA_SRCS := $(wildcard kernels/cuda/*.cu)
CUDA_OBJS := $(CUDA_SRCS:%.cu=$(BUILD)/%.o)
CUDA_SO := $(if $(USE_CUDA),$(BUILD)/lib/libeffdet_cuda.so,)
LDLIBS += -ldl

LAUNCH_SRCS := $(wildcard launch/*.c)
LAUNCH_OBJS := $(LAUNCH_SRCS:%.c=$(BUILD)/%.o)
PROC_DIRS := $(foreach d,loader augment worker evaluator coordinator,$(if $(wildcard $(d)/main.c),$(d),))
PROGS := $(BUILD)/bin/effdet $(PROC_DIRS:%=$(BUILD)/bin/effdet-%)

TEST_SRCS := $(wildcard tests/unit/test_*.c tests/parity/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
TEST_SUPPORT := $(wildcard tests/support/*.c)
TEST_SUPPORT_OBJS := $(TEST_SUPPORT:%.c=$(BUILD)/%.o)
BENCH_SRCS := $(wildcard tests/bench/bench_*.c)
BENCH_BINS := $(BENCH_SRCS:tests/%.c=$(BUILD)/tests/%)
TOOL_SRCS := $(wildcard tests/tools/*.c)
TOOL_BINS := $(TOOL_SRCS:tests/%.c=$(BUILD)/tests/%)
# GPU tests build wherever CUDA does (so CI compiles them) and run only through `make test-gpu`.
GPU_TEST_SRCS := $(if $(USE_CUDA),$(wildcard tests/gpu/test_*.c),)
GPU_TEST_BINS := $(GPU_TEST_SRCS:tests/%.c=$(BUILD)/tests/%)

FIXTURES ?= $(abspath ../shared/fixtures)

.PHONY: all test test-gpu bench bench-data demo clean
# Keep the process mains' objects (pattern-rule intermediates) so relinks don't recompile them.
.SECONDARY:
all: $(PROGS) $(TEST_BINS) $(BENCH_BINS) $(TOOL_BINS) $(GPU_TEST_BINS) $(CUDA_SO)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/lib/libeffdet_cuda.so: $(CUDA_OBJS) $(BUILD)/shared/err.o
	@mkdir -p $(dir $@)
	g++ -shared -Wl,--no-undefined -o $@ $^ $(CUDA_LIBS) $(if $(HAVE_NCCL),-lnccl,) $(SANFLAGS)

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/effdet: $(LAUNCH_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(LAUNCH_OBJS) $(LIB) $(LDLIBS)

$(BUILD)/bin/effdet-%: $(BUILD)/%/main.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_SUPPORT_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TEST_SUPPORT_OBJS) $(LIB) $(LDLIBS) -lcmocka

test: all
	@EFFDET_BIN=$(abspath $(BUILD)/bin) EFFDET_FIXTURES=$(FIXTURES) SAN=$(SAN) \
	  bash tests/run.sh $(TEST_BINS)

# On a machine with a GPU: every CUDA op against the CPU backend (tests/gpu).
test-gpu: all
	@test -n "$(USE_CUDA)" || { echo "test-gpu: this build has no CUDA backend"; exit 1; }
	@EFFDET_BIN=$(abspath $(BUILD)/bin) EFFDET_FIXTURES=$(FIXTURES) bash tests/gpu/run.sh $(GPU_TEST_BINS) tests/gpu/train_gpu.sh

bench: all
	@EFFDET_BIN=$(abspath $(BUILD)/bin) EFFDET_FIXTURES=$(FIXTURES) bash tests/bench/run.sh

# The README's main job on a fresh machine: the dependencies (apt-get, nothing when present), the
# build (a second make, so that pkg-config sees what was just installed), then `effdet demo`.
demo:
	bash scripts/deps.sh
	$(MAKE) -j2 all
	$(BUILD)/bin/effdet demo

# The data pipeline alone (also part of `make bench`).
bench-data: all
	@EFFDET_BIN=$(abspath $(BUILD)/bin) bash tests/bench/data.sh

# Issue #8's GPU figures (D0 512x512 train b64 fp16/bf16/TF32, infer b64 and b1 fp16, one JSON
# line each, and a train --profile); one error line where the CUDA backend is not usable.
.PHONY: bench-gpu
bench-gpu: all
	@EFFDET_BIN=$(abspath $(BUILD)/bin) bash tests/bench/gpu.sh --require-gpu

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
