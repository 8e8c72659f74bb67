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
#include <algorithm>
#include <bit>
#include <chrono>
#include <memory>
#include <unordered_set>
#include <utility>
#include <vector>

#include "lifl/common/job_spec.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/partial.h"
#include "lifl/dataplane/safetensors.h"
#include "lifl/functions/sdk.h"
#include "lifl/gpu/accumulate.h"

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
    switch (d.kind) {
      case DescriptorKind::Update:
        return foldUpdate(ctx, d);
      case DescriptorKind::Partial:
        return foldPartial(ctx, d);
      case DescriptorKind::Ack:
        return onAck(ctx, d);
      case DescriptorKind::Reparent:
        return reparent(ctx, d.aux);
      case DescriptorKind::Flush:
        flushed_ = true;
        if (!pending_.empty()) return foldPending(ctx);
        return acc_ ? maybeForward(ctx) : success();
      case DescriptorKind::Retarget:  // the round closed at its deadline with fewer clients
        expected_ = static_cast<uint32_t>(d.value);
        if (!pending_.empty() && lazyDone()) return foldPending(ctx);
        return acc_ ? maybeForward(ctx) : success();
      default:
        return badRequest("unexpected_descriptor",
                          "aggregator got a " + std::string(kindName(d.kind)) + " descriptor");
    }
  }

 private:
  // A parent that hosts a leaf slot (co-located roles, docs/architecture.md "Scaling"): the
  // slot's updates go to an inner leaf, whose partial comes back to this process as any
  // child's would. So the leaf finishes first and its updates are released as soon as the
  // parent folds its partial, exactly as with a leaf process of its own.
  bool forSlot(const Descriptor& d) const {
    if (d.kind == DescriptorKind::Update || d.kind == DescriptorKind::Flush) return true;
    if (d.kind != DescriptorKind::Ack) return false;
    return std::none_of(unacked_.begin(), unacked_.end(),
                        [&](const Unacked& u) { return u.partial.generation == d.generation; });
  }

  Result<void> configure(const nlohmann::json& p, InstanceId self) {
    if (p.contains("slot") && !p["slot"].is_null()) {
      nlohmann::json leaf = p;
      leaf.erase("slot");
      leaf["role"] = "leaf";
      leaf["parent"] = self;
      leaf["expected"] = p["slot"].value("expected", 1u);
      leaf["base"] = nullptr;
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
      job_ = p.value("job", 0u);
      round_ = p.value("round", 0u);
      for (const auto& t : p.at("tensors")) {
        TensorSpec ts{t.at("name"), t.at("shape").get<std::vector<int64_t>>(), 1};
        for (auto dim : ts.shape) ts.elements *= static_cast<uint64_t>(dim);
        spec_.tensors.push_back(std::move(ts));
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

  Result<void> ensureAccumulator(Context& ctx) {
    if (acc_) return success();
    const uint32_t capacity = role_ == Role::Top ? 0 : batchCapacity();
    // One key per client: a leaf's inputs are single clients; a middle's (and the top's,
    // whose checkpoints a restarted agent reads), whole partials.
    const uint32_t keys =
        role_ == Role::Leaf ? capacity
                            : std::max<uint32_t>(expected_ > folded_ ? expected_ - folded_ : 0, 1);
    LIFL_TRY(object,
             ctx.allocate(dataplane::partialBytes(elements_, capacity, keys), ObjectKind::Partial));
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

  /// @param keys the client keys of the input (`clients` of them)
  Result<void> recordInput(Context& ctx, const ObjectRef& input, double weight, uint32_t clients,
                           const uint64_t* keys) {
    PartialView acc(*acc_);
    auto& h = acc.header();
    h.weightSum += weight;
    for (uint32_t i = 0; i < clients; ++i)  // keys beyond capacity are dropped, never overrun
      if (h.clients + i < h.keyCapacity) acc.keys()[h.clients + i] = keys[i];
    h.clients += clients;
    if (role_ != Role::Top) {
      LIFL_CHECK(h.inputCount < h.inputCapacity, "batch larger than its partial's capacity");
      acc.inputs()[h.inputCount] = InputRecord{input.handle().offset, input.handle().generation};
    }
    h.inputCount++;
    batchInputs_.push_back(input.handle());
    seen_.insert(input.handle().generation);
    folded_ += clients;
    return maybeForward(ctx);
  }

  Result<void> foldUpdate(Context& ctx, const Descriptor& d) {
    if (seen_.count(d.generation)) return success();  // re-delivered after a crash
    if (!eager_) {
      // Lazy (the buffered baseline of bench_round): hold every update, fold all at the end.
      seen_.insert(d.generation);
      pending_.push_back({ObjectHandle{d.offset, d.length, d.generation}, d.value});
      return lazyDone() ? foldPending(ctx) : success();
    }
    return foldOne(ctx, ObjectHandle{d.offset, d.length, d.generation}, d.value);
  }

  bool lazyDone() const {
    return role_ == Role::Leaf ? flushed_ : folded_ + pending_.size() >= expected_;
  }

  Result<void> foldPending(Context& ctx) {
    for (const auto& [handle, weight] : std::exchange(pending_, {}))
      LIFL_TRYV(foldOne(ctx, handle, weight));
    return success();
  }

  Result<void> foldOne(Context& ctx, const ObjectHandle& handle, uint64_t weight) {
    LIFL_TRY(input, ctx.store().resolve(handle));
    input.prefault(/*forWrite=*/false);
    LIFL_TRY(view, dataplane::parseSafetensors(input.data(), input.size()));
    if (view.tensors.size() != spec_.tensors.size())
      return unprocessable("tensor_mismatch", "update does not match the model");
    LIFL_TRYV(ensureAccumulator(ctx));
    const auto started = std::chrono::steady_clock::now();
    float* acc = PartialView(*acc_).acc();
    const float w = static_cast<float>(weight);
    for (size_t i = 0; i < spec_.tensors.size(); ++i) {  // the tensors cover every element
      const auto& tv = view.tensors[i];
      if (accFresh_)
        kernels::assign(acc + offsets_[i], input.data() + tv.begin, *tv.dtype, tv.elements, w);
      else
        kernels::accumulate(acc + offsets_[i], input.data() + tv.begin, *tv.dtype, tv.elements, w);
    }
    accFresh_ = false;
    PartialView(*acc_).header().foldSeconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    seen_.erase(input.handle().generation);  // recordInput marks it (lazy mode marked it first)
    const uint64_t key = input.clientKey();
    return recordInput(ctx, input, static_cast<double>(weight), 1, &key);
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
    LIFL_TRYV(ensureAccumulator(ctx));
    if (accFresh_)
      std::memcpy(PartialView(*acc_).acc(), partial.acc(), elements_ * sizeof(float));
    else
      kernels::addInto(PartialView(*acc_).acc(), partial.acc(), elements_);
    accFresh_ = false;
    PartialView(*acc_).header().foldSeconds += partial.header().foldSeconds;
    input.setOwner(ctx.self());  // ours until our own partial is acknowledged
    (void)ctx.emit(ack);         // a lost ack is recovered by the child's re-send
    const auto& ph = partial.header();
    std::vector<uint64_t> keys(ph.clients, 0);  // unknown keys (beyond capacity) stay 0
    std::memcpy(keys.data(), partial.keys(),
                std::min(ph.clients, ph.keyCapacity) * sizeof(uint64_t));
    return recordInput(ctx, input, ph.weightSum, ph.clients, keys.data());
  }

  // A leaf is done when the agent says every update of its slot was routed (Flush): it
  // cannot count to its fan-in, because after a crash its replacement gets only the
  // updates not yet covered. Middles and the top count clients, which recovery keeps exact.
  Result<void> maybeForward(Context& ctx) {
    const auto inputs = PartialView(*acc_).header().inputCount;
    const bool done = role_ == Role::Leaf ? flushed_ : folded_ >= expected_;
    if (role_ == Role::Top) {
      if (done) return publish(ctx);
      return kTopCheckpointInputs && batchInputs_.size() >= kTopCheckpointInputs ? checkpoint(ctx)
                                                                                 : success();
    }
    if (done || (batch_ && inputs >= batch_)) return forward(ctx);
    // A middle without batches holds its inputs until its parent acknowledges it: bounded
    // by checkpoints as the top's are (leaves are bounded by their fan-in).
    if (kMiddleCheckpointInputs && role_ == Role::Middle && !batch_ &&
        batchInputs_.size() >= kMiddleCheckpointInputs)
      return checkpoint(ctx);
    return success();
  }

  Result<void> forward(Context& ctx) {
    ObjectRef partial = *acc_;
    acc_.reset();
    PartialView view(partial);
    for (uint32_t i = 0; i < view.header().inputCount; ++i) {
      auto in = ctx.store().resolve(
          ObjectHandle{view.inputs()[i].offset, 0, view.inputs()[i].generation});
      if (in) in.value().setContainer(partial.handle().generation);
    }
    // The checkpoint is inside this partial (it continued from it): linked before the seal,
    // so a recovery never sends both.
    std::optional<ObjectRef> superseded;
    if (checkpoint_) {
      if (auto c = ctx.store().resolve(*checkpoint_)) {
        c.value().setContainer(partial.handle().generation);
        superseded = c.value();
      }
      checkpoint_.reset();
    }
    partial.seal();  // after the container links: a sealed partial covers all its inputs
    if (superseded) ctx.store().release(superseded->handle());
    // Covered by the sealed partial: a leaf keeps no update beyond the slot it is filling.
    for (const auto& h : std::exchange(batchInputs_, {})) ctx.store().release(h);
    unacked_.push_back({partial.handle(), {}});
    return send(ctx, partial);
  }

  // A parent holds what it folded until its sum is safe (the top: published; a middle:
  // acknowledged), so that a replacement can rebuild the sum if it dies. To keep that bounded
  // whatever the round's size, every few inputs it seals its accumulator as a checkpoint,
  // continues in a copy, and releases the inputs and the previous checkpoint that the new one
  // covers. Recovery treats a checkpoint as any sealed partial of the dead instance: re-sent
  // to a middle's parent (which counts its clients), re-delivered to a top's replacement.
  // Memory at a parent: two accumulators and a few inputs, flat in N.
  Result<void> checkpoint(Context& ctx) {
    ObjectRef sealed = *acc_;
    PartialView(sealed).header().inputCount = 0;  // its inputs are released below
    LIFL_TRY(next, ctx.allocate(sealed.size(), ObjectKind::Partial));
    next.setTag(job_, round_);
    std::memcpy(next.data(), sealed.data(), sealed.size());  // header, keys and sums
    // Linked before the seal, as forward() does: a recovery that finds the new checkpoint
    // sealed takes it for everything it covers, never an input or older checkpoint as well.
    for (const auto& h : batchInputs_)
      if (auto in = ctx.store().resolve(h)) in.value().setContainer(sealed.handle().generation);
    if (checkpoint_)
      if (auto c = ctx.store().resolve(*checkpoint_))
        c.value().setContainer(sealed.handle().generation);
    sealed.seal();
    for (const auto& h : batchInputs_) ctx.store().release(h);
    batchInputs_.clear();
    if (checkpoint_) ctx.store().release(*checkpoint_);
    checkpoint_ = sealed.handle();
    acc_ = next;
    return success();
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

  Result<void> onAck(Context& ctx, const Descriptor& d) {
    auto it = std::find_if(unacked_.begin(), unacked_.end(),
                           [&](const Unacked& u) { return u.partial.generation == d.generation; });
    if (it == unacked_.end()) return success();  // a repeated ack
    for (const auto& h : it->inputs) {
      auto in = ctx.store().resolve(h);
      if (in && in.value().container() == d.generation) ctx.store().release(h);
    }
    unacked_.erase(it);
    return success();
  }

  Result<void> reparent(Context& ctx, InstanceId parent) {
    parent_ = parent;
    for (const auto& u : unacked_) {  // the old parent may have died before folding these
      auto partial = ctx.store().resolve(u.partial);
      if (partial) (void)send(ctx, partial.value());
    }
    return success();
  }

  Result<void> publish(Context& ctx) {
    PartialView acc(*acc_);
    const std::string header = dataplane::modelHeader(spec_);
    LIFL_TRY(model, ctx.allocate(header.size() + elements_ * sizeof(float), ObjectKind::Model));
    model.setTag(job_, round_);
    std::memcpy(model.data(), header.data(), header.size());
    const float* base = nullptr;
    if (base_) {
      LIFL_TRY(baseModel, ctx.store().resolve(*base_));
      base = reinterpret_cast<const float*>(baseModel.data() + header.size());
    }
    auto* out = reinterpret_cast<float*>(model.data() + header.size());
    kernels::scaleInto(out, acc.acc(), elements_, 1.0 / acc.header().weightSum, base);
    model.seal();
    Descriptor d{};
    d.dst = kAgentInstance;
    d.kind = DescriptorKind::Model;
    d.job = job_;
    d.round = round_;
    d.value = acc.header().clients;
    d.correlation = std::bit_cast<uint64_t>(acc.header().weightSum);
    // The leaves' mean fold time per update (ns), for the planner's throughput estimate.
    const double perUpdate = acc.header().foldSeconds / std::max<uint32_t>(acc.header().clients, 1);
    d.aux = static_cast<uint32_t>(std::clamp(perUpdate * 1e9, 1.0, 4e9));
    model.describe(d);
    LIFL_TRYV(ctx.emit(d));
    // The round is final: the inputs and the accumulator are no longer needed.
    for (const auto& h : batchInputs_) ctx.store().release(h);
    batchInputs_.clear();
    if (checkpoint_) ctx.store().release(*checkpoint_);
    checkpoint_.reset();
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
  std::optional<ObjectHandle> base_;

  struct Unacked {
    ObjectHandle partial;
    std::vector<ObjectHandle> inputs;
  };
  std::optional<ObjectRef> acc_;  ///< the partial under construction
  uint32_t folded_ = 0;           ///< clients folded in this assignment
  bool flushed_ = false;          ///< leaf: no more updates will come
  bool accFresh_ = false;
  bool eager_ = true;  ///< fold on arrival; false: buffer every update, fold at the end
  std::vector<std::pair<ObjectHandle, uint64_t>>
      pending_;  ///< lazy: (update, weight)                  ///< acc_ holds no input yet (its
                 ///< memory is garbage)
  std::unordered_set<uint64_t> seen_;       ///< generations of inputs folded (duplicate filter)
  std::vector<Unacked> unacked_;            ///< sealed partials the parent has not acknowledged
  std::vector<ObjectHandle> batchInputs_;   ///< inputs folded into acc_
  std::optional<ObjectHandle> checkpoint_;  ///< top: the sealed sum of what it released
  std::unique_ptr<Aggregator> slot_;        ///< the leaf slot this parent hosts, if any
  // Inputs held between checkpoints. A checkpoint releases the children's partials it
  // covers; a child that dies later is recovered by client key (JobManager::coveredClients),
  // which finds its clients in this parent's partials.
  static constexpr size_t kTopCheckpointInputs = 2;
  static constexpr size_t kMiddleCheckpointInputs = 4;
};

}  // namespace

void registerFlFunctions(FunctionRegistry& registry) {
  registry.add("fl.aggregator", [] { return std::make_unique<Aggregator>(); });
}

}  // namespace lifl::fn
