// Aggregation throughput: lifl::kernels::accumulate (the aggregators' kernel) against the C
// roofline of acc += w*x compiled for this CPU, and against numpy doing the same FedAvg, all
// in one run. GB/s counts the bytes of the operation: read x, read acc, write acc.
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "lifl/gpu/accumulate.h"

extern "C" void roofline_accumulate(float* acc, const float* x, size_t n, float w);

namespace {

using lifl::DType;
using lifl::bench::now;

struct Aligned {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
std::unique_ptr<T[], Aligned> alloc(size_t n) {
  return std::unique_ptr<T[], Aligned>(
      static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64)));
}

template <class F>
double bestSeconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    double t0 = now();
    f();
    best = std::min(best, now() - t0);
  }
  return best;
}

double numpyFedAvgGBps(size_t n, int k) {
  std::string cmd =
      "/usr/bin/python3 -c \""
      "import numpy as np, time\n"
      "n, k = " +
      std::to_string(n) + ", " + std::to_string(k) +
      "\n"
      "rng = np.random.default_rng(0)\n"
      "xs = [rng.standard_normal(n, dtype=np.float32) for _ in range(k)]\n"
      "w = [float(i + 1) for i in range(k)]\n"
      "best = 1e30\n"
      "for _ in range(5):\n"
      "    acc = np.zeros(n, np.float32)\n"
      "    t = time.perf_counter()\n"
      "    for i in range(k): acc += w[i] * xs[i]\n"
      "    best = min(best, time.perf_counter() - t)\n"
      "print(12 * n * k / best / 1e9)\n\"";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return 0;
  double gbps = 0;
  if (std::fscanf(p, "%lf", &gbps) != 1) gbps = 0;
  pclose(p);
  return gbps;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 11'200'000;  // ResNet-18
  const int k = 8;
  const int reps = 15;
  auto acc = alloc<float>(n);
  auto x = alloc<float>(n);
  auto xh = alloc<_Float16>(n);
  auto xb = alloc<uint16_t>(n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1, 1);
  for (size_t i = 0; i < n; ++i) {
    x[i] = d(rng);
    xh[i] = static_cast<_Float16>(x[i]);
    xb[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(x[i]) >> 16);
    acc[i] = 0;
  }
  const double bytes = 12.0 * static_cast<double>(n);
  auto gbps = [&](double s, double b) { return b / s / 1e9; };

  const double tRoof = bestSeconds(reps, [&] { roofline_accumulate(acc.get(), x.get(), n, 0.5f); });
  const double tLifl = bestSeconds(
      reps, [&] { lifl::kernels::accumulate(acc.get(), x.get(), DType::F32, n, 0.5f); });
  const double tF16 = bestSeconds(
      reps, [&] { lifl::kernels::accumulate(acc.get(), xh.get(), DType::F16, n, 0.5f); });
  const double tBF16 = bestSeconds(
      reps, [&] { lifl::kernels::accumulate(acc.get(), xb.get(), DType::BF16, n, 0.5f); });
  const double tFinite = bestSeconds(reps, [&] {
    volatile uint64_t bad = lifl::kernels::countNonFinite(x.get(), DType::F32, n);
    (void)bad;
  });
  // FedAvg of k updates with the LIFL kernel (what a leaf does), same data layout as numpy's.
  std::vector<std::unique_ptr<float[], Aligned>> xs;
  for (int i = 0; i < k; ++i) {
    xs.push_back(alloc<float>(n));
    for (size_t j = 0; j < n; ++j) xs.back()[j] = d(rng);
  }
  const double tFedAvg = bestSeconds(5, [&] {
    std::memset(acc.get(), 0, n * sizeof(float));
    for (int i = 0; i < k; ++i)
      lifl::kernels::accumulate(acc.get(), xs[i].get(), DType::F32, n, float(i + 1));
  });
  const double numpy = numpyFedAvgGBps(n, k);

  std::printf("aggregation kernel, n = %zu fp32 elements (%.1f MB per update), best of %d runs\n",
              n, 4.0 * static_cast<double>(n) / 1e6, reps);
  lifl::bench::rule(88);
  std::printf("%-44s %12s %14s\n", "kernel", "GB/s", "vs baseline");
  lifl::bench::rule(88);
  std::printf("%-44s %12.2f %14s\n", "C roofline acc += w*x (-O3 -march=native)",
              gbps(tRoof, bytes), "baseline");
  std::printf("%-44s %12.2f %13.2fx\n", "LIFL accumulate, F32 input", gbps(tLifl, bytes),
              tRoof / tLifl);
  std::printf("%-44s %12.2f %14s\n", "LIFL accumulate, F16 input (widened)", gbps(tF16, 10.0 * n),
              "(10 B/elem)");
  std::printf("%-44s %12.2f %14s\n", "LIFL accumulate, BF16 input (widened)", gbps(tBF16, 10.0 * n),
              "(10 B/elem)");
  std::printf("%-44s %12.2f %14s\n", "LIFL NaN/Inf check, F32", gbps(tFinite, 4.0 * n),
              "(4 B/elem)");
  lifl::bench::rule(88);
  std::printf("%-44s %12.2f %14s\n", "numpy FedAvg of 8 updates (acc += w*x)", numpy, "baseline");
  std::printf("%-44s %12.2f %13.2fx\n", "LIFL FedAvg of 8 updates", gbps(tFedAvg, bytes * k),
              numpy > 0 ? gbps(tFedAvg, bytes * k) / numpy : 0.0);
  lifl::bench::rule(88);
  std::printf("targets: LIFL/roofline >= 0.90 -> %.2f %s; LIFL/numpy >= 2.5 -> %.2f %s\n",
              tRoof / tLifl, tRoof / tLifl >= 0.9 ? "met" : "MISSED",
              gbps(tFedAvg, bytes * k) / numpy,
              gbps(tFedAvg, bytes * k) / numpy >= 2.5 ? "met" : "MISSED");
  return 0;
}
