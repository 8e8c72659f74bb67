#include "lifl/gpu/server_optimizer.h"

#include <cmath>

#include "lifl/common/clones.h"
#include "lifl/common/error.h"

namespace lifl::kernels {
namespace {

// d: the step's direction, the weighted mean minus the global model (the mean itself for
// delta updates). Each loop reads acc, x and the state once and writes the model and state.

LIFL_CLONES void avgM(const float* __restrict acc, float inv, const float* __restrict x, bool delta,
                      const float* __restrict mIn, float* __restrict out, float* __restrict mOut,
                      uint64_t n, float lr, float momentum) {
  for (uint64_t i = 0; i < n; ++i) {
    const float mean = acc[i] * inv;
    const float g = delta ? -mean : x[i] - mean;  // Flower's pseudo-gradient: x - fedavg(x)
    const float m = mIn && momentum > 0 ? momentum * mIn[i] + g : g;
    mOut[i] = m;
    out[i] = x[i] - lr * m;
  }
}

enum class Second { Adam, Yogi, Adagrad };

template <Second kind>
LIFL_CLONES void adaptive(const float* __restrict acc, float inv, const float* __restrict x,
                          bool delta, const float* __restrict mIn, const float* __restrict vIn,
                          float* __restrict out, float* __restrict mOut, float* __restrict vOut,
                          uint64_t n, float eta, float b1, float b2, float tau) {
  for (uint64_t i = 0; i < n; ++i) {
    const float mean = acc[i] * inv;
    const float d = delta ? mean : mean - x[i];
    const float m0 = mIn ? mIn[i] : 0.f;
    const float v0 = vIn ? vIn[i] : 0.f;
    const float m = b1 * m0 + (1.f - b1) * d;
    const float d2 = d * d;
    float v;
    if constexpr (kind == Second::Adam) {
      v = b2 * v0 + (1.f - b2) * d2;
    } else if constexpr (kind == Second::Yogi) {
      const float s = v0 - d2;
      v = v0 - (1.f - b2) * d2 * static_cast<float>((s > 0.f) - (s < 0.f));
    } else {
      v = v0 + d2;
    }
    mOut[i] = m;
    vOut[i] = v;
    out[i] = x[i] + eta * m / (std::sqrt(v) + tau);
  }
}

}  // namespace

void serverStep(const Strategy& s, const ServerStepInputs& in, float* out, float* stateOut,
                uint64_t n) {
  const auto inv = static_cast<float>(in.invWeight);
  const float* mIn = in.stateIn;
  const float* vIn = in.stateIn ? in.stateIn + n : nullptr;
  float* mOut = stateOut;
  float* vOut = stateOut + n;
  const auto eta = static_cast<float>(s.eta), b1 = static_cast<float>(s.beta1),
             b2 = static_cast<float>(s.beta2), tau = static_cast<float>(s.tau);
  switch (s.kind) {
    case StrategyKind::FedAvgM:
      return avgM(in.acc, inv, in.global, in.delta, mIn, out, mOut, n,
                  static_cast<float>(s.serverLearningRate), static_cast<float>(s.serverMomentum));
    case StrategyKind::FedAdam:
      return adaptive<Second::Adam>(in.acc, inv, in.global, in.delta, mIn, vIn, out, mOut, vOut, n,
                                    eta, b1, b2, tau);
    case StrategyKind::FedYogi:
      return adaptive<Second::Yogi>(in.acc, inv, in.global, in.delta, mIn, vIn, out, mOut, vOut, n,
                                    eta, b1, b2, tau);
    case StrategyKind::FedAdagrad:
      return adaptive<Second::Adagrad>(in.acc, inv, in.global, in.delta, mIn, vIn, out, mOut, vOut,
                                       n, eta, b1, b2, tau);
    case StrategyKind::FedAvg:
    case StrategyKind::FedProx:
    case StrategyKind::Median:
    case StrategyKind::TrimmedMean:
    case StrategyKind::Krum:
    case StrategyKind::MultiKrum:
    case StrategyKind::FedBuff:
      break;
  }
  LIFL_CHECK(false, "serverStep for a strategy without a server step");
}

}  // namespace lifl::kernels
