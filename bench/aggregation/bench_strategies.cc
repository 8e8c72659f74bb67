// Aggregation throughput by input format and by strategy, beside numpy doing the same math in
// the same run. A round is K updates folded into an accumulator (what the leaves do, one
// kernel call per update) and the top's final step (fedavg: scale; the server optimisers:
// their step). Updates per second is what a leaf sustains; the strategies are compared on
// whole rounds, since they differ only in the step.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "lifl/gpu/accumulate.h"
#include "lifl/gpu/robust.h"
#include "lifl/gpu/server_optimizer.h"

namespace {

using lifl::DType;
using lifl::Strategy;
using lifl::StrategyKind;
using lifl::bench::bestSeconds;
using lifl::bench::now;

/// numpy's seconds per update (F32: acc += w*x; int8: acc += w * (q * repeated scales)) and
/// per Adam step, best of 5.
std::vector<double> numpySeconds(size_t n) {
  const std::string cmd =
      "/usr/bin/python3 -c \""
      "import numpy as np, time\n"
      "n = " +
      std::to_string(n) +
      "\n"
      "rng = np.random.default_rng(0)\n"
      "x = rng.standard_normal(n, dtype=np.float32)\n"
      "q = rng.integers(-127, 128, n, dtype=np.int8)\n"
      "s = rng.random(n // 64, dtype=np.float32)\n"
      "acc = np.zeros(n, np.float32); m = np.zeros(n, np.float32); v = np.zeros(n, np.float32)\n"
      "def best(f):\n"
      "    b = 1e30\n"
      "    for _ in range(5):\n"
      "        t = time.perf_counter(); f(); b = min(b, time.perf_counter() - t)\n"
      "    return b\n"
      "def f32(): acc.__iadd__(np.float32(0.5) * x)\n"
      "def i8(): acc.__iadd__(np.float32(0.5) * (q.astype(np.float32) * np.repeat(s, 64)))\n"
      "def adam():\n"
      "    d = acc * np.float32(0.01) - x\n"
      "    m[:] = 0.9 * m + 0.1 * d; v[:] = 0.99 * v + 0.01 * d * d\n"
      "    return x + 0.1 * m / (np.sqrt(v) + 1e-9)\n"
      "print(best(f32), best(i8), best(adam))\n\"";
  std::vector<double> out(3, 0);
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  if (std::fscanf(p, "%lf %lf %lf", &out[0], &out[1], &out[2]) != 3) out.assign(3, 0);
  pclose(p);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) / 64 * 64 : 11'200'000;
  const int roundUpdates = 100;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<float> acc(n), x(n), out(n), state(2 * n), stateOut(2 * n), scales(n / 64);
  std::vector<_Float16> xh(n);
  std::vector<uint16_t> xb(n);
  std::vector<int8_t> q(n);
  for (size_t i = 0; i < n; ++i) {
    x[i] = d(rng);
    xh[i] = static_cast<_Float16>(x[i]);
    q[i] = static_cast<int8_t>(std::lround(d(rng) * 127));
  }
  lifl::kernels::toBF16(xb.data(), x.data(), n);
  for (auto& s : scales) s = std::abs(d(rng)) / 127.f;

  // Seconds per update folded in place, by input format: one update per pass over the
  // accumulator (a leaf that keeps up), and kFused queued updates per pass (a leaf behind its
  // queue folds what is queued at once: kernels::accumulateMany). Each fused input has its
  // own memory, as queued updates do.
  constexpr size_t kFused = 8;
  std::vector<std::vector<float>> xs(kFused, x);
  std::vector<std::vector<_Float16>> xhs(kFused, xh);
  std::vector<std::vector<uint16_t>> xbs(kFused, xb);
  std::vector<std::vector<int8_t>> qs(kFused, q);
  auto plain = [&](const void* values, DType dtype) {
    return lifl::kernels::FoldInput{values, dtype, nullptr, n, 64, 0.5f};
  };
  auto int8 = [&](const int8_t* values) {
    return lifl::kernels::FoldInput{values, DType::F32, scales.data(), n, 64, 0.5f};
  };
  std::vector<std::vector<lifl::kernels::FoldInput>> fused(4);
  for (size_t k = 0; k < kFused; ++k) {
    fused[0].push_back(plain(xs[k].data(), DType::F32));
    fused[1].push_back(plain(xhs[k].data(), DType::F16));
    fused[2].push_back(plain(xbs[k].data(), DType::BF16));
    fused[3].push_back(int8(qs[k].data()));
  }
  struct Format {
    const char* name;
    double bytesPerValue;
    std::function<void()> single;  ///< one update per pass
    double seconds = 1e30;         ///< best per update, one per pass
    double fusedSeconds = 1e30;    ///< best per update, kFused per pass
  };
  std::vector<Format> formats = {
      {"F32", 4, [&] { lifl::kernels::accumulate(acc.data(), x.data(), DType::F32, n, 0.5f); }},
      {"F16", 2, [&] { lifl::kernels::accumulate(acc.data(), xh.data(), DType::F16, n, 0.5f); }},
      {"BF16", 2, [&] { lifl::kernels::accumulate(acc.data(), xb.data(), DType::BF16, n, 0.5f); }},
      {"int8, block 64", 1 + 4.0 / 64, [&] {
         lifl::kernels::accumulateInt8(acc.data(), acc.data(), q.data(), scales.data(), 1, n, 64,
                                       0.5f);
       }}};
  // Repetitions interleaved across the formats: on a shared VM a burst of noise then slows
  // every format's run of that repetition, not one format's.
  for (int rep = 0; rep < 9; ++rep)
    for (size_t f = 0; f < formats.size(); ++f) {
      formats[f].seconds = std::min(formats[f].seconds, bestSeconds(1, formats[f].single));
      formats[f].fusedSeconds = std::min(formats[f].fusedSeconds, bestSeconds(1, [&] {
                                                                    lifl::kernels::accumulateMany(
                                                                        acc.data(), acc.data(),
                                                                        fused[f].data(), kFused, n);
                                                                  }) / kFused);
    }
  const auto numpy = numpySeconds(n);

  std::printf("aggregation by input format and strategy, n = %zu parameters, best of 9 runs\n", n);
  lifl::bench::rule(96);
  std::printf("%-34s %14s %12s %14s %14s\n", "input format (a leaf's fold)", "updates/s", "GB/s in",
              "vs F32", "vs numpy");
  lifl::bench::rule(96);
  auto row = [&](const std::string& name, const Format& f, double seconds, double f32Seconds) {
    const double numpyS = f.bytesPerValue == 4 ? numpy[0] : f.bytesPerValue < 2 ? numpy[1] : 0;
    std::printf("%-34s %14.1f %12.2f %13.2fx %13s\n", name.c_str(), 1 / seconds,
                f.bytesPerValue * n / seconds / 1e9, f32Seconds / seconds,
                numpyS > 0 ? (std::to_string(numpyS / seconds).substr(0, 5) + "x").c_str() : "-");
  };
  for (const auto& f : formats) row(f.name, f, f.seconds, formats[0].seconds);
  for (const auto& f : formats)
    row(std::string(f.name) + ", " + std::to_string(kFused) + " per pass", f, f.fusedSeconds,
        formats[0].fusedSeconds);
  if (numpy[0] > 0)
    std::printf("%-34s %14.1f %12.2f %14s %14s\n", "numpy F32 (acc += w*x)", 1 / numpy[0],
                4.0 * n / numpy[0] / 1e9, "", "baseline");
  if (numpy[1] > 0)
    std::printf("%-34s %14.1f %12.2f %14s %14s\n", "numpy int8 (dequantise, add)", 1 / numpy[1],
                (1 + 4.0 / 64) * n / numpy[1] / 1e9, "", "baseline");

  // Whole rounds: K F32 updates folded (measured above) and the final step, timed alone
  // (best of 9): the strategies differ only in the step, so the folds' noise stays out.
  const double fold = formats[0].seconds;
  auto stepSeconds = [&](const Strategy* s) {
    return bestSeconds(9, [&] {
      if (!s)
        lifl::kernels::scaleInto(out.data(), acc.data(), n, 1.0 / roundUpdates, nullptr);
      else
        lifl::kernels::serverStep(*s,
                                  {acc.data(), 1.0 / roundUpdates, x.data(), false, state.data()},
                                  out.data(), stateOut.data(), n);
    });
  };
  const double fedavgStep = stepSeconds(nullptr), fedavg = roundUpdates * fold + fedavgStep;
  lifl::bench::rule(96);
  std::printf("%-34s %10s %10s %12s %14s\n", "strategy (round of 100 F32 updates)", "step s",
              "round s", "updates/s", "vs fedavg");
  lifl::bench::rule(96);
  std::printf("%-34s %10.4f %10.3f %12.1f %14s\n", "fedavg", fedavgStep, fedavg,
              roundUpdates / fedavg, "baseline");
  double worst = 1, adamStep = 0;
  for (auto kind : {StrategyKind::FedAvgM, StrategyKind::FedAdam, StrategyKind::FedYogi,
                    StrategyKind::FedAdagrad}) {
    Strategy s;
    s.kind = kind;
    s.serverMomentum = 0.9;
    const double step = stepSeconds(&s), t = roundUpdates * fold + step;
    if (kind == StrategyKind::FedAdam) adamStep = step;
    worst = std::min(worst, fedavg / t);
    std::printf("%-34s %10.4f %10.3f %12.1f %13.2fx\n", s.name().c_str(), step, t, roundUpdates / t,
                fedavg / t);
  }
  // Robust rules over 20 updates of 1 M parameters, in blocks of 8192 coordinates as the
  // aggregator reads them, against numpy's median and a sort-based trimmed mean on the same
  // shape (np.median, np.sort(axis=0)).
  const uint64_t robustN = 20, robustM = std::min<uint64_t>(n, 1'000'000), chunk = 8192;
  std::vector<float> robustData(robustN * robustM), robustBlock(robustN * chunk),
      robustOut(robustM);
  for (auto& v : robustData) v = d(rng);
  auto robustSeconds = [&](StrategyKind kind) {
    Strategy s;
    s.kind = kind;
    return bestSeconds(3, [&] {
      for (uint64_t at = 0; at < robustM; at += chunk) {
        const uint64_t m = std::min(chunk, robustM - at);
        for (uint64_t k = 0; k < robustN; ++k)
          std::memcpy(&robustBlock[k * m], &robustData[k * robustM + at], m * sizeof(float));
        lifl::kernels::robustReduce(s, robustBlock.data(), robustN, m, &robustOut[at]);
      }
    });
  };
  const double tMedian = robustSeconds(StrategyKind::Median),
               tTrimmed = robustSeconds(StrategyKind::TrimmedMean);
  // Krum's work: the pairwise squared distances of the 20 updates, block by block.
  std::vector<double> dist(robustN * robustN);
  const double tKrum = bestSeconds(3, [&] {
    std::fill(dist.begin(), dist.end(), 0.0);
    for (uint64_t at = 0; at < robustM; at += chunk) {
      const uint64_t m = std::min(chunk, robustM - at);
      for (uint64_t k = 0; k < robustN; ++k)
        std::memcpy(&robustBlock[k * m], &robustData[k * robustM + at], m * sizeof(float));
      lifl::kernels::addSquaredDistances(robustBlock.data(), robustN, m, dist.data());
    }
  });
  double npMedian = 0, npTrimmed = 0, npKrum = 0;
  const std::string robustCmd =
      "/usr/bin/python3 -c \"import numpy as np, time\n"
      "v = np.random.default_rng(0).standard_normal((20, " +
      std::to_string(robustM) +
      "), dtype=np.float32)\n"
      "def best(f):\n    b = 1e30\n    for _ in range(3):\n"
      "        t = time.perf_counter(); f(); b = min(b, time.perf_counter() - t)\n    return b\n"
      "def krum():\n    return [[float(np.sum((v[a] - v[b]) ** 2)) for b in range(a + 1, 20)] "
      "for a in range(20)]\n"
      "print(best(lambda: np.median(v, axis=0)), "
      "best(lambda: np.sort(v, axis=0)[4:16].mean(axis=0)), best(krum))\"";
  if (FILE* p = popen(robustCmd.c_str(), "r")) {
    if (std::fscanf(p, "%lf %lf %lf", &npMedian, &npTrimmed, &npKrum) != 3)
      npMedian = npTrimmed = npKrum = 0;
    pclose(p);
  }
  lifl::bench::rule(96);
  std::printf(
      "robust rules, 20 updates x %llu parameters: median LIFL %.3f s, numpy %.3f s "
      "(%.1fx); trimmed_mean LIFL %.3f s, numpy %.3f s (%.1fx)\n",
      static_cast<unsigned long long>(robustM), tMedian, npMedian, npMedian / tMedian, tTrimmed,
      npTrimmed, npTrimmed / tTrimmed);
  std::printf("krum's pairwise distances: LIFL %.3f s, numpy %.3f s (%.1fx)\n", tKrum, npKrum,
              npKrum / tKrum);
  lifl::bench::rule(96);
  std::printf("fedadam step alone: LIFL %.4f s, numpy %.4f s (%.1fx)\n", adamStep, numpy[2],
              numpy[2] > 0 ? numpy[2] / adamStep : 0.0);
  std::printf(
      "targets: server optimisers within 10%% of fedavg's round throughput -> %.2fx %s; "
      "int8 >= 2x the F32 update rate (a leaf under load, %zu per pass) -> %.2fx %s (one per "
      "pass: %.2fx); robust >= 3x numpy -> %.1fx / %.1fx / %.1fx %s\n",
      worst, worst >= 0.9 ? "met" : "MISSED", kFused,
      formats[0].fusedSeconds / formats[3].fusedSeconds,
      formats[0].fusedSeconds / formats[3].fusedSeconds >= 2 ? "met" : "MISSED",
      formats[0].seconds / formats[3].seconds, npMedian / tMedian, npTrimmed / tTrimmed,
      npKrum / tKrum,
      npMedian / tMedian >= 3 && npTrimmed / tTrimmed >= 3 && npKrum / tKrum >= 3 ? "met"
                                                                                  : "MISSED");
  return 0;
}
