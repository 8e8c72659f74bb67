// The kernel library on the GPU machine (docs/benchmarks.md "GPU"), each figure beside its
// baseline measured in the same run:
//   1. device-resident inputs: the fused fold's bytes moved per second as a fraction of the
//      H100's 3.35 TB/s, and PyTorch doing the same weighted sum on the same device;
//   2. inputs in shared memory registered for the device (the store's case): update bytes
//      per second, read by the kernel through the mapping, as a fraction of the pinned
//      host-to-device copy rate and beside a pageable copy;
//   3. a whole round: 100 updates of 11.2 M parameters in shared memory folded on the GPU
//      and the model copied back, against the CPU kernels (one core, and every core).
//
//   bench_gpu [--params P] [--updates N] [--skip-torch]
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "lifl/gpu/device.h"

namespace {

using lifl::DType;
using lifl::gpu::Accumulator;
using lifl::gpu::Backend;
using lifl::gpu::DeviceBuffer;
using lifl::kernels::FoldInput;

using lifl::bench::bestSeconds;
using lifl::bench::now;

uint64_t argOr(int argc, char** argv, const char* name, uint64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::strtoull(argv[i + 1], nullptr, 10);
  return fallback;
}

template <class T>
T check(lifl::Result<T> r, const char* what) {
  if (!r) {
    std::fprintf(stderr, "%s: %s\n", what, r.error().detail.c_str());
    std::exit(1);
  }
  return std::move(r).value();
}
void check(lifl::Result<void> r, const char* what) {
  if (!r) {
    std::fprintf(stderr, "%s: %s\n", what, r.error().detail.c_str());
    std::exit(1);
  }
}

/// PyTorch's best time for acc += sum_k w_k x_k over `inputs` tensors of n values in `dtype`
/// on the same device (acc.add_(x.float(), alpha=w) per input), best of 10 after warm-up.
double torchSeconds(uint64_t n, int inputs, const char* dtype) {
  const std::string cmd =
      "env -u LD_LIBRARY_PATH python3 -c \"import torch\n"
      "n, k = " +
      std::to_string(n) + ", " + std::to_string(inputs) +
      "\n"
      "xs = [torch.randn(n, device='cuda').to(torch." +
      dtype +
      ") for _ in range(k)]\n"
      "acc = torch.zeros(n, device='cuda')\n"
      "def run():\n"
      "    for i, x in enumerate(xs): acc.add_(x, alpha=0.5 + i)\n"
      "for _ in range(3): run()\n"
      "torch.cuda.synchronize()\n"
      "b = 1e30\n"
      "for _ in range(10):\n"
      "    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)\n"
      "    s.record(); run(); e.record(); torch.cuda.synchronize()\n"
      "    b = min(b, s.elapsed_time(e) / 1e3)\n"
      "print(b)\" 2>/dev/null";
  double t = 0;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    if (std::fscanf(p, "%lf", &t) != 1) t = 0;
    pclose(p);
  }
  return t;
}

/// Page-aligned shared memory (as the store's segment is), registered for the device.
struct SharedRegion {
  std::byte* base = nullptr;
  size_t bytes = 0;
  explicit SharedRegion(size_t size) : bytes(size) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("mmap");
      std::exit(1);
    }
    base = static_cast<std::byte*>(p);
  }
  ~SharedRegion() {
    (void)lifl::gpu::unregisterHostMemory(base);
    munmap(base, bytes);
  }
};

}  // namespace

int main(int argc, char** argv) {
  const auto& info = lifl::gpu::cudaInfo();
  if (!info.usable) {
    std::printf("bench_gpu: no CUDA device (%s); run it on the GPU machine\n", info.why.c_str());
    return 0;
  }
  const bool skipTorch = [&] {
    for (int i = 1; i < argc; ++i)
      if (std::strcmp(argv[i], "--skip-torch") == 0) return true;
    return false;
  }();
  std::printf("device: %s, %d multiprocessors\n", info.device.c_str(), info.multiprocessors);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1, 1);

  // 1. Device-resident: 8 inputs of 32 M values folded into a 32 M accumulator (HBM).
  {
    const uint64_t n = 32ull << 20;
    const int k = 8;
    std::vector<float> host(n);
    for (auto& v : host) v = d(rng);
    std::vector<_Float16> half(n);
    std::vector<uint16_t> bf(n);
    std::vector<int8_t> q(n);
    std::vector<float> scales(n / 64, 0.01f);
    for (uint64_t i = 0; i < n; ++i) {
      half[i] = static_cast<_Float16>(host[i]);
      bf[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(host[i]) >> 16);
      q[i] = static_cast<int8_t>(i * 7);
    }
    auto acc = check(Accumulator::create(Backend::Cuda, n), "accumulator");
    auto scaleBuf =
        check(DeviceBuffer::upload(Backend::Cuda, scales.data(), scales.size() * 4), "scales");
    struct Format {
      const char* name;
      const void* data;
      size_t bytesPerValue;
      DType dtype;
      bool int8;
      const char* torchDtype;
    } formats[] = {{"F32", host.data(), 4, DType::F32, false, "float32"},
                   {"F16", half.data(), 2, DType::F16, false, "float16"},
                   {"BF16", bf.data(), 2, DType::BF16, false, "bfloat16"},
                   {"int8, block 64", q.data(), 1, DType::F32, true, nullptr}};
    std::printf("\n1. device-resident inputs: %d x %llu values -> fp32 accumulator (best of 10)\n",
                k, static_cast<unsigned long long>(n));
    std::printf("%-16s %10s %12s %12s %14s %14s\n", "format", "ms", "moved GB/s", "of 3.35 TB/s",
                "torch ms", "vs torch");
    for (const auto& f : formats) {
      std::vector<std::unique_ptr<DeviceBuffer>> bufs;
      std::vector<FoldInput> in;
      for (int i = 0; i < k; ++i) {
        bufs.push_back(
            check(DeviceBuffer::upload(Backend::Cuda, f.data, n * f.bytesPerValue), "upload"));
        in.push_back({bufs.back()->data(), f.dtype,
                      f.int8 ? static_cast<const float*>(scaleBuf->data()) : nullptr, n, 64,
                      0.5f + i});
      }
      check(acc->fold(0, in.data(), k, n, false), "warm-up");
      const double t =
          bestSeconds(10, [&] { check(acc->fold(0, in.data(), k, n, false), "fold"); });
      // Bytes moved: every input once (int8: its scales too), the accumulator read and written.
      const double moved =
          k * (n * double(f.bytesPerValue) + (f.int8 ? n / 64 * 4.0 : 0)) + 2.0 * n * 4;
      const double tt = (!skipTorch && f.torchDtype) ? torchSeconds(n, k, f.torchDtype) : 0;
      std::printf("%-16s %10.3f %12.1f %11.1f%% %14s %14s\n", f.name, t * 1e3, moved / t / 1e9,
                  moved / t / 3.35e12 * 100,
                  tt > 0 ? std::to_string(tt * 1e3).substr(0, 6).c_str() : "-",
                  tt > 0 ? (std::to_string(tt / t).substr(0, 4) + "x").c_str() : "-");
    }
  }

  // 2. Shared-memory inputs: 8 updates of 11.2 M F32 values in registered shared memory.
  {
    const uint64_t n = argOr(argc, argv, "--params", 11'200'000);
    const int k = 8;
    const size_t bytes = n * 4;
    SharedRegion shm(k * bytes);
    for (int i = 0; i < k; ++i) {
      auto* x = reinterpret_cast<float*>(shm.base + i * bytes);
      for (uint64_t j = 0; j < n; ++j) x[j] = d(rng);
    }
    const double t0 = now();
    check(lifl::gpu::registerHostMemory(shm.base, shm.bytes), "register");
    const double registerSeconds = now() - t0;
    auto acc = check(Accumulator::create(Backend::Cuda, n), "accumulator");
    std::vector<FoldInput> in;
    for (int i = 0; i < k; ++i)
      in.push_back({shm.base + i * bytes, DType::F32, nullptr, n, 64, 1.0f});
    check(acc->fold(0, in.data(), k, n, true), "warm-up");
    const double fold =
        bestSeconds(10, [&] { check(acc->fold(0, in.data(), k, n, false), "fold"); });
    const double single = bestSeconds(10, [&] {
      for (int i = 0; i < k; ++i) check(acc->fold(0, &in[i], 1, n, false), "fold");
    });
    auto staging = check(DeviceBuffer::upload(Backend::Cuda, shm.base, bytes), "staging");
    const double pinned =
        bestSeconds(10, [&] { check(staging->copyFrom(shm.base, bytes), "copy"); });
    std::vector<float> pageableSrc(n, 1.f);
    const double pageable =
        bestSeconds(5, [&] { check(staging->copyFrom(pageableSrc.data(), bytes), "copy"); });
    const double updateBytes = double(k) * bytes;
    std::printf(
        "\n2. inputs in registered shared memory: %d updates x %llu F32 values "
        "(registering %.0f MB took %.2f s, once)\n",
        k, static_cast<unsigned long long>(n), shm.bytes / 1e6, registerSeconds);
    std::printf("  pinned H2D copy (cudaMemcpy from the registered memory): %.1f GB/s\n",
                bytes / pinned / 1e9);
    std::printf("  pageable H2D copy (cudaMemcpy from malloc'd memory):      %.1f GB/s\n",
                bytes / pageable / 1e9);
    std::printf(
        "  fused fold, %d per launch, read zero-copy: %.1f GB/s of updates = %.1f%% of "
        "pinned copy, %.1fx pageable\n",
        k, updateBytes / fold / 1e9, (updateBytes / fold) / (bytes / pinned) * 100,
        (updateBytes / fold) / (bytes / pageable));
    std::printf(
        "  one update per launch, read zero-copy:   %.1f GB/s of updates = %.1f%% of "
        "pinned copy\n",
        updateBytes / single / 1e9, (updateBytes / single) / (bytes / pinned) * 100);
    // Zero-copy against the pipelined copy (3 streams), by update size: where auto switches.
    std::printf("  by update size, %d per launch (GB/s of updates; %% of the pinned copy rate):\n",
                k);
    std::printf("  %12s %16s %16s\n", "update", "zero-copy", "pipelined");
    for (uint64_t values :
         std::initializer_list<uint64_t>{16'384, 262'144, 1'048'576, 4'194'304, n}) {
      auto small = check(Accumulator::create(Backend::Cuda, values), "accumulator");
      double rate[2];
      for (int mode = 0; mode < 2; ++mode) {
        lifl::gpu::setHostInputs(mode == 0 ? lifl::gpu::HostInputs::ZeroCopy
                                           : lifl::gpu::HostInputs::Pipelined);
        check(small->fold(0, in.data(), k, values, true), "warm-up");
        const double t =
            bestSeconds(20, [&] { check(small->fold(0, in.data(), k, values, false), "fold"); });
        rate[mode] = k * values * 4.0 / t;
      }
      std::printf("  %9.2f MB %9.1f (%3.0f%%) %9.1f (%3.0f%%)\n", values * 4 / 1e6, rate[0] / 1e9,
                  rate[0] / (bytes / pinned) * 100, rate[1] / 1e9,
                  rate[1] / (bytes / pinned) * 100);
    }
    lifl::gpu::setHostInputs(lifl::gpu::HostInputs::Auto);
  }

  // 3. A whole round: N updates of P values in shared memory, GPU against CPU.
  {
    const uint64_t n = argOr(argc, argv, "--params", 11'200'000);
    const uint64_t updates = argOr(argc, argv, "--updates", 100);
    const size_t bytes = n * 4;
    SharedRegion shm(updates * bytes);
    for (uint64_t i = 0; i < updates; ++i) {
      auto* x = reinterpret_cast<float*>(shm.base + i * bytes);
      const float v = d(rng);
      for (uint64_t j = 0; j < n; ++j) x[j] = v + 1e-3f * static_cast<float>(j % 97);
    }
    const double r0 = now();
    check(lifl::gpu::registerHostMemory(shm.base, shm.bytes), "register");
    const double registerSeconds = now() - r0;
    std::vector<FoldInput> in;
    for (uint64_t i = 0; i < updates; ++i)
      in.push_back({shm.base + i * bytes, DType::F32, nullptr, n, 64, float(1 + i % 50)});
    std::vector<float> model(n);
    auto round = [&](Backend backend, unsigned threads) {
      auto acc = check(Accumulator::create(backend, n), "accumulator");
      const double t0 = now();
      if (threads <= 1) {
        for (uint64_t i = 0; i < updates; i += 8)
          check(acc->fold(0, &in[i], std::min<uint64_t>(8, updates - i), n, i == 0), "fold");
      } else {  // every core: a slice of the values each
        std::vector<std::thread> pool;
        const uint64_t slice = (n / threads + 63) / 64 * 64;
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            const uint64_t at = t * slice, len = std::min(n, at + slice) - std::min(n, at);
            if (!len) return;
            std::vector<FoldInput> part(in);
            for (auto& p : part) p.values = static_cast<const float*>(p.values) + at;
            for (uint64_t i = 0; i < updates; i += 8)
              check(acc->fold(at, &part[i], std::min<uint64_t>(8, updates - i), len, i == 0),
                    "fold");
          });
        for (auto& th : pool) th.join();
      }
      check(acc->scaleInto(model.data(), 1.0 / updates, nullptr), "scale");
      return now() - t0;
    };
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    const double gpu = std::min(round(Backend::Cuda, 1), round(Backend::Cuda, 1));
    const double cpu1 = round(Backend::Cpu, 1);
    const double cpuAll = std::min(round(Backend::Cpu, cores), round(Backend::Cpu, cores));
    std::printf(
        "\n3. whole round: %llu updates x %llu F32 values in shared memory, folded and "
        "the model copied back (registering %.1f GB took %.2f s, once)\n",
        static_cast<unsigned long long>(updates), static_cast<unsigned long long>(n),
        shm.bytes / 1e9, registerSeconds);
    std::printf("  GPU (8 per launch, auto host reads): %.3f s (%.1f GB/s of updates)\n", gpu,
                updates * double(bytes) / gpu / 1e9);
    std::printf("  CPU, one core:                 %.3f s (%.1f GB/s) -> GPU %.1fx faster\n", cpu1,
                updates * double(bytes) / cpu1 / 1e9, cpu1 / gpu);
    std::printf("  CPU, %u cores:                 %.3f s (%.1f GB/s) -> GPU %.1fx faster\n", cores,
                cpuAll, updates * double(bytes) / cpuAll / 1e9, cpuAll / gpu);
  }
  return 0;
}
