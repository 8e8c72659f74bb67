// The FL aggregator: one function that plays leaf, middle or top (DESIGN.md "One update's
// path"). It folds each input into an fp32 accumulator the moment it arrives (eager) and
// forwards (sum n_i w_i, sum n_i) upwards in bounded batches, so the hierarchy is exact:
// the top's sum equals flat FedAvg's whatever the tree.
//
// The accumulator lives in a store object (a partial under construction), so forwarding a
// batch is sealing that object and sending its descriptor: no copy. Inputs stay in the store
// until a sealed partial covers them (invariant 4): the sealed partial survives any process's
// death in the store, and recovery re-sends it, so from then on it replaces its inputs. It is
// re-sent to a new parent until acknowledged; duplicates, from re-delivery after a crash, are
// recognised by generation and dropped (and re-acknowledged).
//
// A leaf folds in place and seals once per batch (its updates are few: its slot). A parent
// (middle, top) folds each input into a new accumulator, next = acc + input, which costs what
// an in-place fold does, and seals it: the sealed accumulator is the checkpoint covering every
// input so far, so the previous one and the input are released at once. A parent thus holds
// two accumulators and the input it is folding whatever the round's size (memory flat in N),
// and a replacement starts from its last sealed accumulator.
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <unordered_set>
#include <utility>
#include <vector>

#include "lifl/common/job_spec.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/partial.h"
#include "lifl/dataplane/safetensors.h"
#include "lifl/functions/sdk.h"
#include "lifl/gpu/accumulate.h"
#include "lifl/gpu/device.h"
#include "lifl/gpu/robust.h"
#include "lifl/gpu/server_optimizer.h"

namespace lifl::fn {
namespace {

using dataplane::InputRecord;
using dataplane::ObjectHandle;
using dataplane::ObjectKind;
using dataplane::ObjectRef;
using dataplane::PartialView;

enum class Role { Leaf, Middle, Top };

class Aggregator final : public Function {
 public:
  Result<void> onEvent(Context& ctx, const Descriptor& d) override {
    if (!configured_) {
      LIFL_TRYV(configure(ctx.params(), ctx.self()));
    }
    if (slot_ && forSlot(d)) return slot_->onEvent(ctx, d);
    if (d.kind == DescriptorKind::Update) return foldUpdate(ctx, d);
    // Updates queued for a fused fold are folded before anything else is handled, so every
    // other event sees the state single folds would have left (and is handled whatever
    // became of them).
    auto folded = foldQueued(ctx);
    auto handled = dispatch(ctx, d);
    return folded ? handled : folded;
  }

  // The queue drained: what is queued is all that is coming for now.
  Result<void> onIdle(Context& ctx) override {
    if (slot_) LIFL_TRYV(slot_->onIdle(ctx));
    return foldQueued(ctx);
  }

 private:
  Result<void> dispatch(Context& ctx, const Descriptor& d) {
    switch (d.kind) {
      case DescriptorKind::Partial:
        return foldPartial(ctx, d);
      case DescriptorKind::Ack:
        return onAck(ctx, d);
      case DescriptorKind::Reparent:
        return reparent(ctx, d.aux);
      case DescriptorKind::Flush:
        flushed_ = true;
        if (!pending_.empty()) {
          LIFL_TRYV(finishLazy(ctx));
        } else if (acc_) {
          LIFL_TRYV(maybeForward(ctx));
        }
        return maybeDone(ctx);
      case DescriptorKind::Retarget:  // the round closed at its deadline with fewer clients
        expected_ = static_cast<uint32_t>(d.value);
        if (!pending_.empty() && lazyDone()) return finishLazy(ctx);
        return acc_ ? maybeForward(ctx) : success();
      default:
        return badRequest("unexpected_descriptor",
                          "aggregator got a " + std::string(kindName(d.kind)) + " descriptor");
    }
  }

  // A parent that hosts a leaf slot (co-located roles, docs/architecture.md "Scaling"): the
  // slot's updates go to an inner leaf, whose partial comes back to this process as any
  // child's would. So the leaf finishes first and its updates are released as soon as the
  // parent folds its partial, exactly as with a leaf process of its own.
  bool forSlot(const Descriptor& d) const {
    if (d.kind == DescriptorKind::Update || d.kind == DescriptorKind::Flush) return true;
    if (d.kind != DescriptorKind::Ack) return false;
    return std::none_of(unacked_.begin(), unacked_.end(),
                        [&](const ObjectHandle& u) { return u.generation == d.generation; });
  }

  Result<void> configure(const nlohmann::json& p, InstanceId self) {
    if (p.contains("slot") && !p["slot"].is_null()) {
      nlohmann::json leaf = p;
      leaf.erase("slot");
      leaf["role"] = "leaf";
      leaf["parent"] = self;
      leaf["expected"] = p["slot"].value("expected", 1u);
      leaf["base"] = nullptr;
      leaf["hosted"] = true;
      slot_ = std::make_unique<Aggregator>();
      LIFL_TRYV(slot_->configure(leaf, self));
    }
    try {
      const std::string role = p.at("role");
      role_ = role == "top" ? Role::Top : role == "middle" ? Role::Middle : Role::Leaf;
      parent_ = p.value("parent", 0u);
      expected_ = p.at("expected");
      batch_ = p.value("batch", 0u);
      eager_ = p.value("eager", true);
      hosted_ = p.value("hosted", false);
      job_ = p.value("job", 0u);
      round_ = p.value("round", 0u);
      for (const auto& t : p.at("tensors")) {
        TensorSpec ts{t.at("name"), t.at("shape").get<std::vector<int64_t>>(), 1};
        for (auto dim : ts.shape) ts.elements *= static_cast<uint64_t>(dim);
        spec_.tensors.push_back(std::move(ts));
      }
      delta_ = p.value("delta", false);
      wantsGpu_ = p.value("device", std::string("cpu")) == "cuda";
      if (p.contains("dp")) {
        dp_.clipNorm = p["dp"].value("clip_norm", 0.0);
        dp_.noiseMultiplier = p["dp"].value("noise_multiplier", 0.0);
        dpSeed_ = p["dp"].value("seed", uint64_t{0});
      }
      if (p.contains("strategy")) {
        LIFL_TRY(strategy, strategyFromJson(p["strategy"]));
        strategy_ = strategy;
        // The aggregator that applies a robust rule needs every update at the end: a leaf
        // (per-leaf approximation, one partial for its slot) or a single-level round's top.
        robustRule_ = strategy_.robust() && (role_ == Role::Leaf || p.value("robust_rule", false));
        if (robustRule_) {
          eager_ = false;
          batch_ = 0;
        }
      }
      if (p.contains("base") && !p["base"].is_null())
        base_ = ObjectHandle{p["base"].at("offset"), p["base"].at("length"),
                             p["base"].at("generation")};
    } catch (const nlohmann::json::exception& e) {
      return badRequest("malformed_assignment", std::string("aggregator params: ") + e.what());
    }
    uint64_t off = 0;
    for (const auto& t : spec_.tensors) {
      offsets_.push_back(off);
      off += t.elements;
    }
    elements_ = off;
    configured_ = true;
    return success();
  }

  uint32_t batchCapacity() const {
    uint32_t remaining = expected_ > folded_ ? expected_ - folded_ : 1;
    return batch_ ? std::min(batch_, remaining) : remaining;
  }

  /// @param inputs a leaf's input capacity (default: its batch)
  Result<void> ensureAccumulator(Context& ctx, std::optional<uint32_t> inputs = std::nullopt) {
    if (acc_) return success();
    const uint32_t capacity =
        role_ == Role::Leaf ? inputs.value_or(batchCapacity()) : 0;  // parents: see above
    // One key per client: a leaf's inputs are single clients; a middle's (and the top's,
    // whose checkpoints a restarted agent reads), whole partials.
    const uint32_t keys =
        role_ == Role::Leaf ? capacity
                            : std::max<uint32_t>(expected_ > folded_ ? expected_ - folded_ : 0, 1);
    LIFL_TRY(object, ctx.allocateWaiting(dataplane::partialBytes(elements_, capacity, keys),
                                         ObjectKind::Partial));
    object.setTag(job_, round_);
    PartialView view(object);
    view.header() = dataplane::PartialHeader{};
    view.header().inputCapacity = capacity;
    view.header().keyCapacity = keys;
    view.header().elements = elements_;
    view.header().accOffset = dataplane::partialAccOffset(capacity, keys);
    object.prefault(/*forWrite=*/true);
    acc_ = object;  // not zeroed: the first input is assigned, not added (accFresh_)
    accFresh_ = true;
    return success();
  }

  /// Counts one folded input in the accumulator's header.
  /// @param keys the client keys of the input (`clients` of them)
  void noteInput(const ObjectRef& input, double weight, uint32_t clients, const uint64_t* keys) {
    PartialView acc(current());
    auto& h = acc.header();
    h.weightSum += weight;
    for (uint32_t i = 0; i < clients; ++i)  // keys beyond capacity are dropped, never overrun
      if (h.clients + i < h.keyCapacity) acc.keys()[h.clients + i] = keys[i];
    h.clients += clients;
    if (role_ == Role::Leaf) {
      LIFL_CHECK(h.inputCount < h.inputCapacity, "batch larger than its partial's capacity");
      acc.inputs()[h.inputCount++] = InputRecord{input.handle().offset, input.handle().generation};
    }
    accInputs_++;
    seen_.insert(input.handle().generation);
    folded_ += clients;
  }

  /// The inputs just folded (and noted) are covered: by the parent's new sealed accumulator
  /// at once, or by the leaf's partial once it is sealed.
  Result<void> settleInputs(Context& ctx, const std::vector<ObjectRef>& inputs) {
    if (checkpointing())
      commitCheckpoint(ctx, inputs);
    else
      for (const auto& input : inputs) batchInputs_.push_back(input.handle());
    return maybeForward(ctx);
  }

  /// The accumulator being written: the new one while a parent folds, else the current one.
  const ObjectRef& current() const { return folding_ ? *folding_ : *acc_; }

  /// Parents fold into a new accumulator each time (see the top of this file); a lazy
  /// aggregator holds every input until the end anyway and folds in place.
  bool checkpointing() const { return role_ != Role::Leaf && eager_; }

  /// The accumulator the next input is summed into, and where the sums so far are read from:
  /// the same object for an in-place fold, null for the first input.
  struct FoldTarget {
    float* out;
    const float* prev;
  };
  Result<FoldTarget> foldTarget(Context& ctx) {
    if (!checkpointing() || !acc_) {
      LIFL_TRYV(ensureAccumulator(ctx));
      float* acc = PartialView(*acc_).acc();
      return FoldTarget{acc, accFresh_ ? nullptr : acc};
    }
    // header and keys come along; the sums are written by the fold
    LIFL_TRY(next, ctx.allocateWaiting(acc_->size(), ObjectKind::Partial));
    next.setTag(job_, round_);
    std::memcpy(next.data(), acc_->data(), PartialView(*acc_).header().accOffset);
    next.prefault(/*forWrite=*/true);
    folding_ = next;
    return FoldTarget{PartialView(next).acc(), PartialView(*acc_).acc()};
  }

  /// The new accumulator, sealed, replaces the previous one and the inputs it covers: linked
  /// to it before the seal, so a recovery that finds it sealed never counts them as well.
  void commitCheckpoint(Context& ctx, const std::vector<ObjectRef>& inputs) {
    ObjectRef next = folding_ ? *std::exchange(folding_, std::nullopt) : *acc_;
    const uint64_t gen = next.handle().generation;
    for (const auto& input : inputs) input.setContainer(gen);
    if (acc_ && acc_->handle().generation != gen) acc_->setContainer(gen);
    next.seal();
    if (acc_ && acc_->handle().generation != gen) ctx.store().release(acc_->handle());
    for (const auto& input : inputs) ctx.store().release(input.handle());
    acc_ = next;
  }

  Result<void> foldUpdate(Context& ctx, const Descriptor& d) {
    if (seen_.count(d.generation)) return success();  // re-delivered after a crash
    seen_.insert(d.generation);
    const ObjectHandle handle{d.offset, d.length, d.generation};
    if (!eager_) {
      // Lazy (the buffered baseline of bench_round): hold every update, fold all at the end.
      pending_.push_back({handle, d.value});
      return lazyDone() ? finishLazy(ctx) : success();
    }
    // Eager: folded when the queue drains (onIdle), or once a fused fold's worth is queued.
    // A leaf that keeps up folds each update on arrival; one that is behind folds what is
    // queued in one pass over its accumulator (kernels::accumulateMany).
    queued_.push_back({handle, d.value});
    return queued_.size() >= fuseLimit() ? foldQueued(ctx) : success();
  }

  /// Updates the accumulator being filled can still take in one fused fold.
  size_t fuseLimit() const {
    uint64_t room = expected_ > folded_ ? expected_ - folded_ : 1;
    if (role_ == Role::Leaf) {
      if (acc_) {
        const auto& h = PartialView(*acc_).header();
        room = h.inputCapacity - h.inputCount;
      } else {
        room = batchCapacity();
      }
    }
    return static_cast<size_t>(std::clamp<uint64_t>(room, 1, kernels::kMaxFused));
  }

  /// Folds every queued update; returns the first error after all the others are folded.
  Result<void> foldQueued(Context& ctx) {
    Result<void> result = success();
    while (!queued_.empty()) {
      const size_t n = std::min(queued_.size(), fuseLimit());
      std::vector<std::pair<ObjectHandle, uint64_t>> group(queued_.begin(), queued_.begin() + n);
      queued_.erase(queued_.begin(), queued_.begin() + n);
      if (auto r = foldUpdates(ctx, group); !r && result) result = r;
    }
    return result;
  }

  bool lazyDone() const {
    return role_ == Role::Leaf ? flushed_ : folded_ + pending_.size() >= expected_;
  }

  Result<void> finishLazy(Context& ctx) {
    if (robustRule_) return role_ == Role::Top ? robustPublish(ctx) : robustPartial(ctx);
    auto held = std::exchange(pending_, {});
    queued_.insert(queued_.end(), held.begin(), held.end());
    return foldQueued(ctx);
  }

  /// A leaf of a device: cuda job folds on the GPU (docs/gpu.md): its sums live in device
  /// memory and the updates are read where they are, in the store's segment (registered
  /// once per process for zero-copy reads). Parents fold one partial per child on the CPU.
  /// Null: fold on the CPU (asked for, or no device here: said once in the log).
  Result<gpu::Accumulator*> deviceAccumulator(Context& ctx) {
    if (!gpuChecked_) {
      gpuChecked_ = true;
      if (wantsGpu_ && role_ == Role::Leaf && eager_ &&
          gpu::pickBackend(true) == gpu::Backend::Cuda) {
        auto registered = gpu::registerHostMemory(ctx.store().base(), ctx.store().mappedBytes());
        auto acc = registered ? gpu::Accumulator::create(gpu::Backend::Cuda, elements_)
                              : Result<std::unique_ptr<gpu::Accumulator>>(registered.error());
        if (acc) {
          gpuAcc_ = std::move(acc).value();
          if (static bool said = false; !std::exchange(said, true))  // once per process
            LIFL_INFO("leaf folds on the GPU (" << gpu::cudaInfo().device << ")");
        } else {
          LIFL_WARN("leaf folds on the CPU: " << acc.error().detail);
        }
      } else if (static bool said = false;
                 wantsGpu_ && role_ == Role::Leaf && !std::exchange(said, true)) {
        LIFL_WARN("device: cuda asked for, but the leaf folds on the CPU ("
                  << (eager_ ? gpu::cudaInfo().why : std::string("a lazy leaf")) << ")");
      }
    }
    return gpuAcc_.get();
  }

  /// Folds a group of updates (weights: their examples) in one pass over the accumulator.
  /// An update that cannot be read is left out, and its error returned after the others fold.
  Result<void> foldUpdates(Context& ctx,
                           const std::vector<std::pair<ObjectHandle, uint64_t>>& group) {
    std::vector<ObjectRef> inputs;
    std::vector<dataplane::SafetensorsView> views;
    std::vector<std::vector<dataplane::EncodedTensor>> encodings;
    std::vector<uint64_t> weights;
    std::vector<float> foldWeights;
    views.reserve(group.size());  // the encodings point into the views: no reallocation
    std::optional<Error> failed;
    for (const auto& [handle, weight] : group) {
      auto read = [&]() -> Result<void> {
        LIFL_TRY(input, ctx.store().resolve(handle));
        input.prefault(/*forWrite=*/false);
        LIFL_TRY(view, dataplane::parseSafetensors(input.data(), input.size()));
        views.push_back(std::move(view));
        LIFL_TRY(encoded, dataplane::matchModel(views.back(), spec_, /*allowInt8=*/true));
        // FedBuff: an update applied `staleness` versions after the one it was trained from
        // counts 1/sqrt(1 + staleness) of its examples in the sum, all of them in the divisor.
        foldWeights.push_back(
            static_cast<float>(static_cast<double>(weight) * clipFactor(input, encoded) *
                               strategy_.stalenessFactor(input.staleness())));
        inputs.push_back(input);
        encodings.push_back(std::move(encoded));
        weights.push_back(weight);
        return success();
      };
      if (auto r = read(); !r) failed = r.error();
    }
    if (!inputs.empty()) {
      LIFL_TRY(target, foldTarget(ctx));
      LIFL_TRY(gpu, deviceAccumulator(ctx));
      const auto started = std::chrono::steady_clock::now();
      std::vector<kernels::FoldInput> folds(inputs.size());
      for (size_t t = 0; t < spec_.tensors.size(); ++t) {  // the tensors cover every element
        for (size_t k = 0; k < inputs.size(); ++k) {
          const auto& e = encodings[k][t];
          const std::byte* base = inputs[k].data();
          folds[k] = {base + e.values->begin,
                      e.scales ? DType::F32 : *e.values->dtype,
                      e.scales ? reinterpret_cast<const float*>(base + e.scales->begin) : nullptr,
                      e.cols,
                      e.block,
                      foldWeights[k]};
        }
        if (gpu) {  // the sums stay on the device; forward() copies them into the partial
          auto folded = gpu->fold(offsets_[t], folds.data(), folds.size(),
                                  spec_.tensors[t].elements, accFresh_);
          LIFL_CHECK(folded.has_value(), "a fold on the device failed: the instance restarts");
        } else {
          kernels::accumulateMany(target.out + offsets_[t],
                                  target.prev ? target.prev + offsets_[t] : nullptr, folds.data(),
                                  folds.size(), spec_.tensors[t].elements);
        }
      }
      accFresh_ = false;
      PartialView(current()).header().foldSeconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      for (size_t k = 0; k < inputs.size(); ++k) {
        const uint64_t key = inputs[k].clientKey();
        noteInput(inputs[k], static_cast<double>(weights[k]), 1, &key);
      }
      LIFL_TRYV(settleInputs(ctx, inputs));
    }
    if (failed) return *failed;
    return success();
  }

  // Central DP: the update (a delta) scaled down to L2 norm clip_norm if it is longer; its
  // weight in the mean stays its examples. One read of the update before the fold.
  double clipFactor(const ObjectRef& input, const std::vector<dataplane::EncodedTensor>& encoded) {
    if (!dp_.enabled()) return 1;
    double squares = 0;
    for (const auto& e : encoded) {
      const std::byte* x = input.data() + e.values->begin;
      squares += e.scales ? kernels::sumSquaresInt8(
                                reinterpret_cast<const int8_t*>(x),
                                reinterpret_cast<const float*>(input.data() + e.scales->begin),
                                e.rows, e.cols, e.block)
                          : kernels::sumSquares(x, *e.values->dtype, e.values->elements);
    }
    const double norm = std::sqrt(squares);
    return norm > dp_.clipNorm ? dp_.clipNorm / norm : 1.0;
  }

  Result<void> foldPartial(Context& ctx, const Descriptor& d) {
    Descriptor ack{};
    ack.dst = d.src;
    ack.kind = DescriptorKind::Ack;
    ack.job = d.job;
    ack.round = d.round;
    ack.offset = d.offset;
    ack.length = d.length;
    ack.generation = d.generation;
    if (seen_.count(d.generation)) {
      (void)ctx.emit(ack);  // a duplicate: the sender missed our ack, so ack again
      return success();
    }
    LIFL_TRY(input, ctx.store().resolve(d));
    input.prefault(/*forWrite=*/false);
    PartialView partial(input);
    if (!partial.valid() || partial.header().elements != elements_ || !input.sealed())
      return badRequest("malformed_partial", "partial does not match this aggregator");
    LIFL_TRY(target, foldTarget(ctx));
    if (!target.prev)
      std::memcpy(target.out, partial.acc(), elements_ * sizeof(float));
    else if (target.prev == target.out)
      kernels::addInto(target.out, partial.acc(), elements_);
    else
      kernels::accumulateInto(target.out, target.prev, partial.acc(), DType::F32, elements_, 1.0f);
    accFresh_ = false;
    PartialView(current()).header().foldSeconds += partial.header().foldSeconds;
    input.setOwner(ctx.self());  // ours until our own partial is acknowledged
    (void)ctx.emit(ack);         // a lost ack is recovered by the child's re-send
    const auto& ph = partial.header();
    std::vector<uint64_t> keys(ph.clients, 0);  // unknown keys (beyond capacity) stay 0
    std::memcpy(keys.data(), partial.keys(),
                std::min(ph.clients, ph.keyCapacity) * sizeof(uint64_t));
    noteInput(input, ph.weightSum, ph.clients, keys.data());
    return settleInputs(ctx, {input});
  }

  // A leaf is done when the agent says every update of its slot was routed (Flush): it
  // cannot count to its fan-in, because after a crash its replacement gets only the
  // updates not yet covered. Middles and the top count clients, which recovery keeps exact.
  Result<void> maybeForward(Context& ctx) {
    const bool done = role_ == Role::Leaf ? flushed_ : folded_ >= expected_;
    if (role_ == Role::Top) return done ? publish(ctx) : success();
    if (done || (batch_ && accInputs_ >= batch_)) return forward(ctx);
    return success();
  }

  Result<void> forward(Context& ctx) {
    ObjectRef partial = std::exchange(acc_, std::nullopt).value();
    accInputs_ = 0;
    if (!partial.sealed()) {  // a leaf's batch (a parent's accumulator is sealed already)
      if (gpuAcc_ && !accFresh_) {
        auto copied = gpuAcc_->copyTo(PartialView(partial).acc());  // once per batch
        LIFL_CHECK(copied.has_value(), "copying the sums from the device failed");
      }
      for (const auto& h : batchInputs_)
        if (auto in = ctx.store().resolve(h)) in.value().setContainer(partial.handle().generation);
      partial.seal();  // after the container links: a sealed partial covers all its inputs
      // Covered by the sealed partial: a leaf keeps no update beyond the slot it is filling.
      for (const auto& h : std::exchange(batchInputs_, {})) ctx.store().release(h);
    }
    unacked_.push_back(partial.handle());
    return send(ctx, partial);
  }

  Result<void> send(Context& ctx, const ObjectRef& partial) {
    Descriptor d{};
    d.dst = parent_;
    d.kind = DescriptorKind::Partial;
    d.job = job_;
    d.round = round_;
    partial.describe(d);
    return ctx.emit(d);
  }

  // The parent holds the partial from here; its inputs were released when it was sealed.
  Result<void> onAck(Context& ctx, const Descriptor& d) {
    std::erase_if(unacked_, [&](const ObjectHandle& u) { return u.generation == d.generation; });
    return maybeDone(ctx);
  }

  // A flushed leaf whose partials are all acknowledged holds nothing of the round: the agent
  // may give its process to a later slot. A slot hosted in its parent's process never is.
  Result<void> maybeDone(Context& ctx) {
    if (role_ != Role::Leaf || hosted_ || doneSent_ || !flushed_ || acc_ || !unacked_.empty() ||
        !pending_.empty() || !queued_.empty())
      return success();
    doneSent_ = true;
    Descriptor d{};
    d.dst = kAgentInstance;
    d.kind = DescriptorKind::Done;
    d.job = job_;
    d.round = round_;
    return ctx.emit(d);
  }

  Result<void> reparent(Context& ctx, InstanceId parent) {
    parent_ = parent;
    for (const auto& u : unacked_) {  // the old parent may have died before folding these
      auto partial = ctx.store().resolve(u);
      if (partial) (void)send(ctx, partial.value());
    }
    return success();
  }

  // Central DP: Gaussian noise of standard deviation noise_multiplier * clip_norm / clients on
  // every parameter of the new model, from a generator seeded by the job's seed and round.
  void addDpNoise(float* model, uint32_t clients) const {
    const double sigma = dp_.noiseStd(clients);
    if (!dp_.enabled() || sigma <= 0) return;
    std::mt19937_64 rng(dpSeed_ * 0x9E3779B97F4A7C15ull + round_ + 1);
    std::normal_distribution<float> noise(0.f, static_cast<float>(sigma));
    for (uint64_t i = 0; i < elements_; ++i) model[i] += noise(rng);
  }

  /// Seals the new model and sends it to the agent with the round's count and weight.
  Result<void> emitModel(Context& ctx, ObjectRef& model, uint32_t clients, double weightSum,
                         double foldSeconds) {
    model.seal();
    Descriptor d{};
    d.dst = kAgentInstance;
    d.kind = DescriptorKind::Model;
    d.job = job_;
    d.round = round_;
    d.value = clients;
    d.correlation = std::bit_cast<uint64_t>(weightSum);
    // The mean fold time per update (ns), for the planner's throughput estimate.
    const double perUpdate = foldSeconds / std::max<uint32_t>(clients, 1);
    d.aux = static_cast<uint32_t>(std::clamp(perUpdate * 1e9, 1.0, 4e9));
    model.describe(d);
    return ctx.emit(d);
  }

  // The robust strategies (docs/strategies.md), over every update this aggregator holds
  // (pending_): coordinate by coordinate, unweighted. The updates are read a block of rows at
  // a time into fp32 (widened or dequantised there), so the working memory beside them is a
  // few MB whatever their number. The rule's result goes to `out` (elements_ floats).
  struct RobustInputs {
    std::vector<ObjectRef> objects;
    std::vector<dataplane::SafetensorsView> views;
    std::vector<std::vector<dataplane::EncodedTensor>> encodings;
  };
  Result<void> readPending(Context& ctx, RobustInputs& in) {
    in.views.reserve(pending_.size());  // the encodings point into the views: no reallocation
    for (const auto& [handle, weight] : pending_) {
      LIFL_TRY(input, ctx.store().resolve(handle));
      LIFL_TRY(view, dataplane::parseSafetensors(input.data(), input.size()));
      in.views.push_back(std::move(view));
      LIFL_TRY(encoded, dataplane::matchModel(in.views.back(), spec_, /*allowInt8=*/true));
      in.objects.push_back(input);
      in.encodings.push_back(std::move(encoded));
    }
    return success();
  }

  void applyRobustRule(const RobustInputs& in, float* out) {
    const size_t n = in.objects.size();
    std::vector<float> block;
    // Each tensor a block of rows at a time: fn(tensor, first row, rows end, values, out).
    auto forBlocks = [&](auto&& fn) {
      for (size_t t = 0; t < spec_.tensors.size(); ++t) {
        const uint64_t rows = in.encodings[0][t].rows, cols = in.encodings[0][t].cols;
        const uint64_t chunkRows = std::max<uint64_t>(1, 8192 / std::max<uint64_t>(cols, 1));
        for (uint64_t r0 = 0; r0 < rows; r0 += chunkRows) {
          const uint64_t r1 = std::min(rows, r0 + chunkRows);
          fn(t, r0, r1, (r1 - r0) * cols, out + offsets_[t] + r0 * cols);
        }
      }
    };
    auto readAll = [&](size_t t, uint64_t r0, uint64_t r1, uint64_t m) {
      block.resize(n * m);
      for (size_t k = 0; k < n; ++k)
        readRows(in.objects[k], in.encodings[k][t], r0, r1, &block[k * m]);
    };
    if (!strategy_.krum()) {
      forBlocks([&](size_t t, uint64_t r0, uint64_t r1, uint64_t m, float* dst) {
        readAll(t, r0, r1, m);
        kernels::robustReduce(strategy_, block.data(), n, m, dst);
      });
      return;
    }
    // Krum: the pairwise distances over every block first, then the kept updates' mean,
    // weighted by their examples (one update for krum: that update).
    std::vector<double> dist(n * n, 0.0);
    forBlocks([&](size_t t, uint64_t r0, uint64_t r1, uint64_t m, float*) {
      readAll(t, r0, r1, m);
      kernels::addSquaredDistances(block.data(), n, m, dist.data());
    });
    const auto kept = kernels::krumSelect(strategy_, dist.data(), n);
    double keptWeight = 0;
    for (uint32_t k : kept) keptWeight += static_cast<double>(pending_[k].second);
    forBlocks([&](size_t t, uint64_t r0, uint64_t r1, uint64_t m, float* dst) {
      block.resize(m);
      for (size_t i = 0; i < kept.size(); ++i) {
        readRows(in.objects[kept[i]], in.encodings[kept[i]][t], r0, r1, block.data());
        const auto w =
            static_cast<float>(static_cast<double>(pending_[kept[i]].second) / keptWeight);
        if (i == 0)
          kernels::assign(dst, block.data(), DType::F32, m, w);
        else
          kernels::accumulate(dst, block.data(), DType::F32, m, w);
      }
    });
  }

  // The one aggregator of a single-level round: the exact rule is the model.
  Result<void> robustPublish(Context& ctx) {
    const auto started = std::chrono::steady_clock::now();
    RobustInputs in;
    LIFL_TRYV(readPending(ctx, in));
    double weightSum = 0;
    for (const auto& [handle, weight] : pending_) weightSum += static_cast<double>(weight);
    const size_t n = in.objects.size();
    const std::string header = dataplane::modelHeader(spec_);
    LIFL_TRY(model,
             ctx.allocateWaiting(header.size() + elements_ * sizeof(float), ObjectKind::Model));
    model.setTag(job_, round_);
    std::memcpy(model.data(), header.data(), header.size());
    auto* out = reinterpret_cast<float*>(model.data() + header.size());
    applyRobustRule(in, out);
    if (delta_ && base_) {
      LIFL_TRY(baseModel, ctx.store().resolve(*base_));
      const auto* base = reinterpret_cast<const float*>(baseModel.data() + header.size());
      for (uint64_t i = 0; i < elements_; ++i) out[i] += base[i];
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    LIFL_TRYV(emitModel(ctx, model, static_cast<uint32_t>(n), weightSum, seconds));
    folded_ += static_cast<uint32_t>(n);
    for (const auto& [handle, weight] : std::exchange(pending_, {})) ctx.store().release(handle);
    return success();
  }

  // A leaf of a per-leaf robust round (the job asked for the approximation): the rule over
  // the slot's m updates, r, goes up as a partial (m r, weight m), so the top's weighted mean
  // is the leaves' results weighted by their update counts.
  Result<void> robustPartial(Context& ctx) {
    const auto started = std::chrono::steady_clock::now();
    RobustInputs in;
    LIFL_TRYV(readPending(ctx, in));
    const auto n = static_cast<uint32_t>(in.objects.size());
    LIFL_TRYV(ensureAccumulator(ctx, n));
    float* acc = PartialView(*acc_).acc();
    applyRobustRule(in, acc);
    kernels::scaleInto(acc, acc, elements_, n, nullptr);
    accFresh_ = false;
    PartialView(*acc_).header().foldSeconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    for (const auto& input : in.objects) {
      const uint64_t key = input.clientKey();
      noteInput(input, 1.0, 1, &key);
    }
    pending_.clear();
    return settleInputs(ctx, in.objects);
  }

  /// Rows [r0, r1) of one update's tensor, as fp32.
  static void readRows(const ObjectRef& input, const dataplane::EncodedTensor& e, uint64_t r0,
                       uint64_t r1, float* out) {
    const std::byte* x = input.data() + e.values->begin;
    if (e.scales) {
      const uint64_t blocks = (e.cols + e.block - 1) / e.block;
      kernels::accumulateInt8(
          out, nullptr, reinterpret_cast<const int8_t*>(x) + r0 * e.cols,
          reinterpret_cast<const float*>(input.data() + e.scales->begin) + r0 * blocks, r1 - r0,
          e.cols, e.block, 1.0f);
    } else {
      const DType dtype = *e.values->dtype;
      kernels::assign(out, x + r0 * e.cols * dtypeSize(dtype), dtype, (r1 - r0) * e.cols, 1.0f);
    }
  }

  Result<void> publish(Context& ctx) {
    PartialView acc(*acc_);
    const std::string header = dataplane::modelHeader(spec_);
    const uint64_t modelBytes = header.size() + elements_ * sizeof(float);
    // A server optimiser's state rides in the model object after its tensors (not served:
    // the object's length is the model's): the next round's top reads it from its base.
    const uint32_t stateVectors = strategy_.stateVectors();
    const uint64_t stateBytes = uint64_t{stateVectors} * elements_ * sizeof(float);
    LIFL_TRY(model, ctx.allocateWaiting(modelBytes + stateBytes, ObjectKind::Model));
    model.setTag(job_, round_);
    std::memcpy(model.data(), header.data(), header.size());
    std::optional<ObjectRef> baseModel;
    if (base_) {
      LIFL_TRY(resolved, ctx.store().resolve(*base_));
      baseModel = resolved;
    }
    const float* base =
        baseModel ? reinterpret_cast<const float*>(baseModel->data() + header.size()) : nullptr;
    auto* out = reinterpret_cast<float*>(model.data() + header.size());
    const double invWeight = 1.0 / acc.header().weightSum;
    if (stateVectors) {
      if (!base) return badRequest("no_global_model", "a server optimiser needs the global model");
      const bool hasState =
          baseModel->value() == stateVectors && baseModel->capacity() >= modelBytes + stateBytes;
      kernels::serverStep(
          strategy_, {acc.acc(), invWeight, base, delta_, hasState ? base + elements_ : nullptr},
          out, out + elements_, elements_);
      model.setValue(stateVectors);  // the state follows the tensors
      model.setLength(modelBytes);
    } else {
      const double rate = strategy_.asynchronous() ? strategy_.serverLearningRate : 1.0;
      kernels::scaleInto(out, acc.acc(), elements_, invWeight * rate, delta_ ? base : nullptr);
    }
    addDpNoise(out, acc.header().clients);
    LIFL_TRYV(emitModel(ctx, model, acc.header().clients, acc.header().weightSum,
                        acc.header().foldSeconds));
    // The round is final: the inputs and the accumulator are no longer needed.
    for (const auto& h : std::exchange(batchInputs_, {})) ctx.store().release(h);
    ctx.store().release(acc_->handle());
    acc_.reset();
    return success();
  }

  bool configured_ = false;
  Role role_ = Role::Leaf;
  InstanceId parent_ = 0;
  uint32_t expected_ = 0;
  uint32_t batch_ = 0;
  uint32_t job_ = 0, round_ = 0;
  JobSpec spec_;
  std::vector<uint64_t> offsets_;
  uint64_t elements_ = 0;
  std::optional<ObjectHandle> base_;          ///< the global model the round started from
  bool delta_ = false;                        ///< updates are deltas from base_
  Strategy strategy_;                         ///< the top: how the model follows from the sums
  bool robustRule_ = false;                   ///< applies the robust rule to the updates it holds
  bool wantsGpu_ = false;                     ///< the job (or node) asked for device: cuda
  bool gpuChecked_ = false;                   ///< the backend was chosen (on the first fold)
  std::unique_ptr<gpu::Accumulator> gpuAcc_;  ///< a leaf's sums on the device
  DpSpec dp_;                                 ///< central DP: clip at the leaves, noise at the top
  uint64_t dpSeed_ = 0;

  std::optional<ObjectRef> acc_;  ///< the partial under construction
  uint32_t folded_ = 0;           ///< clients folded in this assignment
  uint32_t accInputs_ = 0;        ///< inputs folded into acc_ (a batch)
  bool flushed_ = false;          ///< leaf: no more updates will come
  bool hosted_ = false;           ///< a leaf slot run inside its parent's process
  bool doneSent_ = false;         ///< leaf: the agent was told it is free
  bool accFresh_ = false;         ///< acc_ holds no input yet (its memory is garbage)
  bool eager_ = true;             ///< fold on arrival; false: buffer every update, fold at the end
  std::vector<std::pair<ObjectHandle, uint64_t>> pending_;  ///< lazy: (update, weight)
  std::vector<std::pair<ObjectHandle, uint64_t>> queued_;   ///< eager: for the next fused fold
  std::unordered_set<uint64_t> seen_;      ///< generations of inputs folded (duplicate filter)
  std::vector<ObjectHandle> unacked_;      ///< sealed partials the parent has not acknowledged
  std::vector<ObjectHandle> batchInputs_;  ///< inputs folded into acc_ in place
  std::optional<ObjectRef> folding_;       ///< a parent's next accumulator, while it folds
  std::unique_ptr<Aggregator> slot_;       ///< the leaf slot this parent hosts, if any
};

}  // namespace

void registerFlFunctions(FunctionRegistry& registry) {
  registry.add("fl.aggregator", [] { return std::make_unique<Aggregator>(); });
}

}  // namespace lifl::fn
