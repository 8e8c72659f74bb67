#include "lifl/dataplane/job_manager.h"

#include <bit>
#include <cstring>
#include <utility>

#include "job_manager_internal.h"
#include "lifl/common/log.h"
#include "lifl/common/scope_exit.h"
#include "lifl/dataplane/partial.h"
#include "lifl/dataplane/safetensors.h"
#include "lifl/gpu/accumulate.h"

namespace lifl::dataplane {

using namespace detail;

JobManager::JobManager(ObjectStore& store, Endpoint& endpoint, Supervisor& supervisor,
                       Metrics& metrics, Planner planner, double idleSeconds,
                       JobCheckpoints checkpoints)
    : store_(store),
      endpoint_(endpoint),
      supervisor_(supervisor),
      metrics_(metrics),
      planner_(std::move(planner)),
      idleSeconds_(idleSeconds),
      checkpoints_(std::move(checkpoints)),
      deadlines_([this] { watchDeadlines(); }) {}

JobManager::~JobManager() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  stopDeadlines_.notify_all();
  deadlines_.join();
}

Descriptor JobManager::roundDescriptor(const Job& job, InstanceId dst, DescriptorKind kind,
                                       const ObjectRef* object) {
  Descriptor d{};
  d.dst = dst;
  d.kind = kind;
  d.job = job.slot;
  d.round = job.round;
  if (object) object->describe(d);
  return d;
}

bool JobManager::send(Descriptor d) {
  if (d.dst == 0) return false;  // a leaf slot without a process: not reached yet, or done
  auto sent = endpoint_.send(d);
  if (!sent)
    LIFL_WARN("send " << kindName(d.kind) << " to " << d.dst << ": " << sent.error().detail);
  return static_cast<bool>(sent);
}

Result<JobManager::Job*> JobManager::find(const std::string& id) const {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return notFound("unknown_job", "no job named " + id);
  return it->second.get();
}

Result<nlohmann::json> JobManager::create(JobSpec spec) {
  std::lock_guard lock(mutex_);
  if (jobs_.count(spec.id)) return conflict("job_exists", "a job named " + spec.id + " exists");
  LIFL_TRYV(fitsInStore(spec));
  auto job = std::make_unique<Job>();
  job->slot = nextSlot_++;
  job->spec = std::move(spec);
  LIFL_TRYV(createInitialModel(*job));
  if (auto started = startRound(*job); !started) {
    if (job->model) store_.release(*job->model);
    return started.error();
  }
  Job* raw = job.get();
  bySlot_[raw->slot] = raw;
  jobs_[raw->spec.id] = std::move(job);
  persist(*raw, /*withModel=*/true);
  LIFL_INFO(
      "job " << raw->spec.id << ": " << raw->spec.clientsPerRound << " clients x "
             << raw->spec.rounds << " rounds, " << raw->plan.leaves << " leaves"
             << (raw->plan.middles ? ", " + std::to_string(raw->plan.middles) + " middles" : "")
             << ", fan-in " << raw->spec.fanIn << ", " << raw->spec.modelElements()
             << " parameters");
  return nlohmann::json{{"id", raw->spec.id}, {"round", 0}};
}

Result<void> JobManager::createInitialModel(Job& job) {
  if (job.spec.init == ModelInit::None) return success();
  const std::string header = modelHeader(job.spec);
  const uint64_t n = job.spec.modelElements();
  LIFL_TRY(model,
           store_.allocate(header.size() + n * sizeof(float), ObjectKind::Model, kAgentInstance));
  std::memcpy(model.data(), header.data(), header.size());
  auto* w = reinterpret_cast<float*>(model.data() + header.size());
  if (job.spec.init == ModelInit::Zeros) {
    std::memset(w, 0, n * sizeof(float));
  } else {  // uniform in [-0.05, 0.05) from splitmix64(seed): documented in docs/api.md
    uint64_t s = job.spec.seed;
    for (uint64_t i = 0; i < n; ++i)
      w[i] = static_cast<float>((static_cast<double>(splitmix64(s) >> 11) * 0x1.0p-53 - 0.5) * 0.1);
  }
  model.setTag(job.slot, 0);
  model.seal();
  job.model = model.handle();
  return success();
}

nlohmann::json JobManager::aggregatorParams(const Job& job, size_t node, uint32_t expected) const {
  const PlanNode& n = job.plan.nodes[node];
  nlohmann::json tensors = nlohmann::json::array();
  for (const auto& t : job.spec.tensors) tensors.push_back({{"name", t.name}, {"shape", t.shape}});
  // A cluster member's subtree root is a middle whose parent is the top on another node.
  const bool subtreeRoot = job.cluster && !job.cluster->isRoot && n.role == AggregatorRole::Top;
  nlohmann::json p = {{"role", subtreeRoot ? "middle" : roleName(n.role)},
                      {"parent", parentOf(job, node)},
                      {"expected", expected},
                      {"batch", job.spec.batch},
                      {"eager", job.spec.eager},
                      {"job", job.slot},
                      {"round", job.round},
                      {"tensors", tensors},
                      {"base", nullptr}};
  for (size_t leaf = 0; leaf < job.plan.leaves && leaf < job.instances.size(); ++leaf)
    if (job.plan.nodes[leaf].parent == static_cast<int>(node) && rides(job, leaf)) {
      p["slot"] = {{"expected", job.plan.nodes[leaf].expected}};  // the leaf slot it hosts
      break;
    }
  const bool serverStep = job.spec.strategy.serverStep();
  if (n.role == AggregatorRole::Top && (job.spec.update == UpdateMode::Delta || serverStep) &&
      job.model)
    p["base"] = {{"offset", job.model->offset},
                 {"length", job.model->length},
                 {"generation", job.model->generation}};
  p["delta"] = job.spec.update == UpdateMode::Delta;
  p["device"] = job.spec.device.empty() ? defaultDevice_ : job.spec.device;
  if (serverStep || job.spec.strategy.robust() || job.spec.strategy.asynchronous())
    p["strategy"] = job.spec.strategy.toJson();
  // A single-node plan's top holds the round's updates itself: it applies the rule exactly.
  if (job.spec.strategy.robust() && job.plan.nodes.size() == 1) p["robust_rule"] = true;
  if (job.spec.dp.enabled())
    p["dp"] = {{"clip_norm", job.spec.dp.clipNorm},
               {"noise_multiplier", job.spec.dp.noiseMultiplier},
               {"seed", job.spec.seed}};
  return p;
}

InstanceId JobManager::parentOf(const Job& job, size_t node) const {
  const PlanNode& n = job.plan.nodes[node];
  if (n.parent >= 0) return job.instances[static_cast<size_t>(n.parent)];
  return job.cluster && !job.cluster->isRoot ? kAgentInstance : 0;
}

std::vector<InstanceId> JobManager::distinctInstances(const Job& job) {
  std::vector<InstanceId> out;
  for (InstanceId id : job.instances)
    if (id && std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  return out;
}

bool JobManager::rides(const Job& job, size_t node) {
  const int parent = job.plan.nodes[node].parent;
  return job.plan.nodes[node].role == AggregatorRole::Leaf && parent >= 0 &&
         job.instances[node] != 0 &&
         job.instances[node] == job.instances[static_cast<size_t>(parent)];
}

void JobManager::releaseTree(Job& job) {
  for (InstanceId id : distinctInstances(job)) supervisor_.release(id);
  job.instances.clear();
}

Result<void> JobManager::deployTree(Job& job) {
  // Reuse the instances of the previous round (warm, same processes), take more from the
  // pool only when the tree grew, and give back what it no longer needs. With co-located
  // roles, each middle (and a top over leaves) runs in the process of its first leaf: the
  // parent folds its own slot's updates, then its children's partials, so the tree needs
  // no process, and no cold start, for the levels above the leaves.
  const size_t n = job.plan.nodes.size();
  std::vector<int> hostOf(n, -1);
  if (colocate_) {
    std::vector<bool> hosting(n, false);
    for (size_t i = 0; i < job.plan.leaves && i < n; ++i) {
      const int p = job.plan.nodes[i].parent;
      if (job.plan.nodes[i].role != AggregatorRole::Leaf || p < 0 ||
          hosting[static_cast<size_t>(p)])
        continue;
      hosting[static_cast<size_t>(p)] = true;
      hostOf[i] = p;
    }
  }
  // Leaf slots fill one after the other: a leaf gets its process when updates are about to
  // reach it, and gives it back when its partial is folded (onLeafDone), so a round needs
  // processes for the slots being filled, not for all of them.
  auto deferred = [&](size_t i) {
    return i >= kLeavesDeployedAhead && i < job.plan.leaves &&
           job.plan.nodes[i].role == AggregatorRole::Leaf && hostOf[i] < 0;
  };
  auto reuse = distinctInstances(job);
  std::reverse(reuse.begin(), reuse.end());  // taken from the back, in their old order
  job.instances.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (hostOf[i] >= 0 || deferred(i)) continue;
    if (!reuse.empty()) {
      job.instances[i] = reuse.back();
      reuse.pop_back();
      continue;
    }
    auto id = supervisor_.reserve();
    if (!id) {
      for (InstanceId taken : job.instances)
        if (taken) supervisor_.release(taken);
      for (InstanceId left : reuse) supervisor_.release(left);
      job.instances.clear();
      return id.error();
    }
    job.instances[i] = id.value();
  }
  for (InstanceId left : reuse) supervisor_.release(left);
  for (size_t i = 0; i < n; ++i)
    if (hostOf[i] >= 0) job.instances[i] = job.instances[static_cast<size_t>(hostOf[i])];
  for (size_t i = 0; i < n; ++i)
    if (hostOf[i] < 0 && job.instances[i])
      LIFL_TRYV(supervisor_.assign(job.instances[i], kAggregator,
                                   aggregatorParams(job, i, job.plan.nodes[i].expected)));
  job.scaledToZero = false;
  return success();
}

Result<void> JobManager::startRound(Job& job, uint32_t coveredByPartials) {
  const uint32_t viaLeaves = job.spec.clientsPerRound > coveredByPartials
                                 ? job.spec.clientsPerRound - coveredByPartials
                                 : 0;
  // A robust strategy needs every update at one aggregator: a single level (unless the job
  // asked for the per-leaf approximation).
  const uint32_t levels = job.spec.strategy.singleLevel() ? 1 : job.spec.levels;
  job.plan =
      planner_(PlanRequest{viaLeaves, job.spec.fanIn, levels, job.arrivalRate, job.leafThroughput});
  job.plan.nodes[static_cast<size_t>(job.plan.top())].expected += coveredByPartials;
  LIFL_TRYV(deployTree(job));
  job.received = 0;
  job.routedTotal = 0;
  job.stalenessSum = 0;
  job.stalenessMax = 0;
  job.routed.assign(job.plan.leaves, {});
  job.cursor = 0;
  // Late updates parked while the previous round closed are this round's first.
  job.sources = std::move(job.parkedSources);
  job.acceptedBefore = std::exchange(job.accepted, std::move(job.parkedAccepted));
  job.reserved = job.parkedReserved;
  job.parkedSources.clear();
  job.parkedAccepted.clear();
  job.parkedReserved = 0;
  job.closing = false;
  job.roundOpened = std::chrono::steady_clock::now();
  job.roundStarted = !job.parked.empty();
  if (job.roundStarted) job.roundStart = job.roundOpened;
  for (auto& p : std::exchange(job.parked, {})) {
    auto update = store_.resolve(p.object);
    if (!update) continue;
    // Accepted already (into the round that was closing): recorded now for its own round, as
    // well as the disk allows.
    if (auto j = job.cluster
                     ? success()
                     : checkpoints_.journal(job.spec.id, job.round, p.meta.source, p.meta.id);
        !j)
      LIFL_WARN("job " << job.spec.id
                       << ": a parked update is not journaled: " << j.error().detail);
    route(job, update.value(), p.meta);
  }
  return success();
}

void JobManager::finish(Job& job, State state) {
  job.state = state;
  persist(job);
  for (const auto& p : std::exchange(job.parked, {})) store_.release(p.object);
  releaseTree(job);
  offloadModel(job);  // a last round's checkpoint, written after the lock, offloads it then
}

void JobManager::offloadModel(Job& job) {
  if (job.state == State::Active || job.cluster || !job.model) return;
  auto model = store_.resolve(*job.model);
  if (!model || !checkpoints_.hasModel(job.spec.id, job.round, model.value().size())) return;
  store_.release(*job.model);
  job.model.reset();
  job.modelSaved = true;
}

nlohmann::json JobManager::statusOf(const Job& job) const {
  const char* state = job.state == State::Done          ? "done"
                      : job.state == State::Cancelled   ? "cancelled"
                      : job.state == State::Failed      ? "failed"
                      : job.received + job.reserved > 0 ? "aggregating"
                                                        : "waiting";
  nlohmann::json history = nlohmann::json::array();
  for (const auto& r : job.history)
    history.push_back({{"round", r.round},
                       {"clients", r.clients},
                       {"weight", r.weight},
                       {"seconds", r.seconds},
                       {"closed", r.byDeadline ? "deadline" : "complete"}});
  if (job.spec.strategy.asynchronous())  // how far behind the buffer's updates were
    for (size_t i = 0; i < history.size(); ++i)
      history[i]["staleness"] = {{"mean", job.history[i].meanStaleness},
                                 {"max", job.history[i].maxStaleness}};
  if (job.spec.dp.enabled())  // what this round's privacy cost: the clip and the noise added
    for (size_t i = 0; i < history.size(); ++i)
      history[i]["dp"] = {{"clip_norm", job.spec.dp.clipNorm},
                          {"noise_std", job.spec.dp.noiseStd(job.history[i].clients)}};
  nlohmann::json plan = job.plan.toJson();
  plan["instances"] = job.instances;
  nlohmann::json out = {
      {"id", job.spec.id},
      {"state", state},
      {"round", job.round},
      {"rounds", job.spec.rounds},
      {"received", job.received},
      {"expected", job.spec.clientsPerRound},
      {"strategy", job.spec.strategy.name()},
      {"update", job.spec.update == UpdateMode::Delta ? "delta" : "weights"},
      {"device", job.spec.device.empty() ? defaultDevice_ : job.spec.device},
      {"plan", plan},
      {"has_model", job.model.has_value() || job.modelSaved},
      {"history", history},
      {"recoveries", job.recoveries},
      {"scale_ups", job.scaleUps},
      {"late",
       {{"dropped", job.lateDropped}, {"folded", job.lateFolded}, {"waiting", job.parked.size()}}},
      {"closing", job.closing},
      {"scaled_to_zero", job.scaledToZero},
      {"lost", {{"on_restart", job.lostOnRestart}}},
      {"spec", job.spec.toJson()}};
  if (job.cluster) {
    const auto& c = *job.cluster;
    out["cluster"] = {{"epoch", c.epoch},
                      {"root", c.root},
                      {"is_root", c.isRoot},
                      {"top", c.top},
                      {"share", c.share},
                      {"closed", c.closed},
                      {"close_at", c.closeAt},
                      {"total", c.total},
                      {"model", c.modelTag},
                      {"partials_in", c.partialsIn.size()},
                      {"partials_out", c.partialsOut},
                      {"partials_kept", c.kept.size()}};
  }
  if (!job.failure.empty()) out["failure"] = job.failure;
  return out;
}

std::map<std::string, uint64_t> JobManager::aggregatorsByRole() const {
  std::lock_guard lock(mutex_);
  std::map<std::string, uint64_t> out;
  for (const auto& [_, job] : jobs_)
    if (job->state == State::Active)
      for (size_t i = 0; i < job->plan.nodes.size(); ++i)
        if (i < job->instances.size() && job->instances[i] && !rides(*job, i))
          out[roleName(job->plan.nodes[i].role)]++;  // a process of its own, running
  return out;
}

nlohmann::json JobManager::list() const {
  std::lock_guard lock(mutex_);
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [id, job] : jobs_) {
    auto s = statusOf(*job);
    out.push_back({{"id", id}, {"round", job->round}, {"state", s["state"]}});
  }
  return out;
}

Result<nlohmann::json> JobManager::status(const std::string& id) const {
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
  return statusOf(*job);
}

Result<void> JobManager::cancel(const std::string& id) {
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
  if (job->state == State::Active) finish(*job, State::Cancelled);
  return success();
}

Result<uint64_t> JobManager::admitModel(const std::string& id) const {
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
  if (job->state != State::Active || job->round != 0 || job->received + job->reserved != 0)
    return conflict("model_locked",
                    "the initial model can be set only before round 0 receives updates");
  return maxUpdateBytes(job->spec);
}

Result<std::pair<JobManager::Job*, SafetensorsView>> JobManager::validated(const std::string& id,
                                                                           const ObjectRef& body,
                                                                           bool update) const {
  Job* job = nullptr;
  {
    std::lock_guard lock(mutex_);
    LIFL_TRY(found, find(id));
    job = found;
  }
  // Outside the lock (a job's spec never changes), so uploads are validated in parallel.
  LIFL_TRY(view, parseSafetensors(body.data(), body.size()));
  LIFL_TRYV(matchModel(view, job->spec, /*allowInt8=*/update));
  LIFL_TRYV(checkFinite(body.data(), view));
  return std::make_pair(job, std::move(view));
}

Result<void> JobManager::setModel(const std::string& id, const ObjectRef& uploaded) {
  LIFL_TRY(checked, validated(id, uploaded, /*update=*/false));
  auto& [job, view] = checked;
  const std::string header = modelHeader(job->spec);
  const uint64_t n = job->spec.modelElements();
  LIFL_TRY(model,
           store_.allocate(header.size() + n * sizeof(float), ObjectKind::Model, kAgentInstance));
  std::memcpy(model.data(), header.data(), header.size());
  auto* out = reinterpret_cast<float*>(model.data() + header.size());
  std::memset(out, 0, n * sizeof(float));
  uint64_t off = 0;
  for (const auto& t : view.tensors) {  // widened to F32: 0 + 1*x is exact
    kernels::accumulate(out + off, uploaded.data() + t.begin, *t.dtype, t.elements, 1.0f);
    off += t.elements;
  }
  model.setTag(job->slot, 0);
  model.seal();
  std::lock_guard lock(mutex_);
  if (job->state != State::Active || job->round != 0 || job->received + job->reserved != 0) {
    store_.release(model.handle());
    return conflict("model_locked",
                    "the initial model can be set only before round 0 receives updates");
  }
  if (job->model) store_.release(*job->model);
  job->model = model.handle();
  persist(*job, /*withModel=*/true);
  // A delta job's top needs the base model: re-assign the tree with it.
  if (job->spec.update == UpdateMode::Delta) LIFL_TRYV(startRound(*job));
  return success();
}

Result<ModelLease> JobManager::leaseModel(const std::string& id) {
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
  if (job->modelSaved) {
    LIFL_TRY(file, checkpoints_.mapModel(id, job->round));
    // The file may carry a server optimiser's state after the tensors: served without it.
    const uint64_t tensors = modelHeader(job->spec).size() + job->spec.modelElements() * 4;
    if (file->size() < tensors)
      return internal("checkpoint_unreadable", "the saved model of job " + id + " is short");
    ModelLease lease{{}, job->round, std::move(file), tensors};
    return lease;
  }
  if (!job->model) return notFound("no_model", "job " + id + " has no model yet");
  LIFL_TRY(model, store_.resolve(*job->model));
  store_.retain(model);
  return ModelLease{model, job->round, nullptr, 0};
}

void JobManager::returnModel(const ModelLease& lease) {
  if (!lease.file) store_.release(lease.object.handle());
}

bool JobManager::admitsIntoNextRound(const Job& job) {
  return job.closing || (job.spec.strategy.asynchronous() &&
                         job.received + job.reserved >= job.spec.clientsPerRound);
}

Result<Admission> JobManager::admit(const std::string& id, UpdateMeta& meta) {
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
  if (job->cluster) return admitClustered(*job, meta);
  if (job->state != State::Active)
    return conflict("job_finished", "job " + id + " is no longer taking updates");
  const std::string key = acceptKey(meta);
  if (job->accepted.count(key) || job->parkedAccepted.count(key))
    return Admission{true, job->round, maxUpdateBytes(job->spec)};
  if (job->round > 0 && job->acceptedBefore.count(key))  // a retry after its round closed
    return Admission{true, job->round - 1, maxUpdateBytes(job->spec)};
  if (meta.round > job->round)
    return conflict("wrong_round", "update is for round " + std::to_string(meta.round) +
                                       " but job " + id + " is at round " +
                                       std::to_string(job->round));
  // While the closed (or, fedbuff, full) round is aggregated, an update waits for the next.
  meta.parked = admitsIntoNextRound(*job);
  meta.target = job->round + (meta.parked ? 1 : 0);
  if (job->spec.strategy.asynchronous()) {
    // No round barrier: an update from an older version is taken while it is fresh enough.
    meta.staleness = meta.target - meta.round;
    if (meta.staleness > job->spec.strategy.maxStaleness)
      return conflict("stale_update",
                      "update trained from version " + std::to_string(meta.round) + " would be " +
                          std::to_string(meta.staleness) + " versions stale (max_staleness " +
                          std::to_string(static_cast<uint32_t>(job->spec.strategy.maxStaleness)) +
                          "): pull the model and train again");
  } else {
    // Late: for a round that has closed (at its deadline, or complete).
    meta.late = meta.round < job->round || job->closing;
    if (meta.late && job->spec.late == LatePolicy::Drop) {
      job->lateDropped++;
      return conflict("late_update", "round " + std::to_string(meta.round) +
                                         " has closed; this job drops late updates");
    }
  }
  if (job->spec.update == UpdateMode::Delta && !job->model)
    return conflict("no_model", "a delta job needs its initial model before updates");
  if (job->scaledToZero) {
    if (auto deployed = deployTree(*job); !deployed)
      return unavailable("no_instances",
                         "cannot bring the job's aggregators back: " + deployed.error().detail);
  }
  auto& sources = meta.parked ? job->parkedSources : job->sources;
  const std::string slotKey = roundSlotKey(job->spec, meta.source, meta.id);
  if (auto s = sources.find(slotKey); s != sources.end()) {
    if (s->second == meta.id)
      return conflict("update_in_progress", "this update is still being received");
    return conflict("duplicate_client",
                    "client " + meta.source + " already sent a different update this round");
  }
  const uint32_t taken = meta.parked
                             ? static_cast<uint32_t>(job->parked.size()) + job->parkedReserved
                             : job->received + job->reserved;
  if (taken >= job->spec.clientsPerRound) {
    if (job->spec.strategy.asynchronous())  // both buffers full: a moment's wait frees one
      return unavailable("buffer_full", "the next buffer of job " + id +
                                            " is full while the current one is aggregated; retry");
    return conflict("round_full", "round " + std::to_string(job->round) + " has all its updates");
  }
  sources[slotKey] = meta.id;
  (meta.parked ? job->parkedReserved : job->reserved)++;
  if (!meta.parked && !job->roundStarted) {
    job->roundStarted = true;
    job->roundStart = std::chrono::steady_clock::now();
  }
  return Admission{false, meta.target, maxUpdateBytes(job->spec)};
}

void JobManager::abandon(const std::string& id, const UpdateMeta& meta) {
  std::lock_guard lock(mutex_);
  auto found = find(id);
  if (!found) return;
  Job* job = found.value();
  if (job->cluster) {
    job->cluster->inFlight.erase(meta.source);
    return;
  }
  // A parked reservation moves into the round's when that round starts.
  const bool parked = meta.parked && job->round < meta.target;
  auto& sources = parked ? job->parkedSources : job->sources;
  if (auto s = sources.find(roundSlotKey(job->spec, meta.source, meta.id));
      s != sources.end() && s->second == meta.id) {
    sources.erase(s);
    (parked ? job->parkedReserved : job->reserved)--;
  }
}

Result<uint32_t> JobManager::commit(const std::string& id, const UpdateMeta& meta,
                                    ObjectRef update) {
  LIFL_TRY(checked, validated(id, update, /*update=*/true));
  Job* job = checked.first;
  if (clustered()) return commitClustered(id, job, meta, update);
  std::lock_guard lock(mutex_);
  if (job->state != State::Active)
    return conflict("job_finished", "job " + id + " was cancelled while the update arrived");
  if (job->closing && !meta.parked) {
    // Admitted before the deadline, complete after it: too late for the closed round.
    const bool async = job->spec.strategy.asynchronous();
    if (!async && job->spec.late == LatePolicy::Drop) {
      job->lateDropped++;
      return conflict("late_update", "round " + std::to_string(job->round) +
                                         " closed at its deadline while this update arrived");
    }
    const std::string slotKey = roundSlotKey(job->spec, meta.source, meta.id);
    job->sources.erase(slotKey);
    job->reserved--;
    job->parkedSources[slotKey] = meta.id;
    UpdateMeta moved = meta;
    moved.parked = true;
    moved.late = !async;  // fedbuff has no late updates: it goes into the next buffer
    moved.target = job->round + 1;
    moved.staleness = moved.target - moved.round;
    job->parkedAccepted.insert(acceptKey(moved));
    update.setOwner(kAgentInstance);
    job->parked.push_back({update.handle(), moved});
    return moved.target;
  }
  if (meta.parked && job->round < meta.target) {
    job->parkedReserved--;
    job->parkedAccepted.insert(acceptKey(meta));
    update.setOwner(kAgentInstance);  // held by the agent until the next round's tree exists
    job->parked.push_back({update.handle(), meta});
    return meta.target;
  }
  // Journaled before it counts: an update the data dir cannot record is refused (503
  // disk_full), not accepted and then forgotten by a restart.
  if (!job->cluster)
    LIFL_TRYV(checkpoints_.journal(job->spec.id, job->round, meta.source, meta.id));
  job->reserved--;
  route(*job, update, meta);
  metrics_.updateAccepted(id, update.size());
  return job->round;
}

void JobManager::route(Job& job, ObjectRef update, const UpdateMeta& meta, bool recovered) {
  job.routedTotal++;
  job.received++;
  if (!recovered) job.accepted.insert(acceptKey(meta));
  if (meta.late) job.lateFolded++;
  const size_t slot = slotFor(job, recovered);
  if (auto deployed = deployLeaf(job, slot); !deployed) {
    job.failure = "cannot start a leaf: " + deployed.error().detail;
    LIFL_ERROR("job " << job.spec.id << ": " << job.failure);
    finish(job, State::Failed);
    return;
  }
  if (slot + 1 < job.plan.leaves && job.routed[slot + 1].empty())
    (void)deployLeaf(job, slot + 1);  // the next slot's process starts while this one fills
  job.lastArrival = std::chrono::steady_clock::now();
  const InstanceId leaf = job.instances[slot];
  update.setTag(job.slot, job.round);
  update.setValue(meta.numExamples);
  if (!recovered) {
    update.setClientKey(clientKeyOf(acceptKey(meta)));
    update.setStaleness(meta.staleness);  // the leaf weighs the update by it
  }
  if (job.spec.strategy.asynchronous()) {
    job.stalenessSum += update.staleness();
    job.stalenessMax = std::max(job.stalenessMax, update.staleness());
    metrics_.updateStaleness(job.spec.id, update.staleness());
  }
  job.routed[slot].push_back(update.clientKey());  // before the send: the leaf may free it
  update.setOwner(leaf);  // from here the leaf (or, if it dies, its replacement) is responsible
  Descriptor d = roundDescriptor(job, leaf, DescriptorKind::Update, &update);
  d.value = meta.numExamples;
  // A failed send means the leaf just died: the object is owned by it, and recovery
  // re-delivers it to the replacement. The update is accepted either way.
  send(d);
  if (job.routed[slot].size() == job.plan.nodes[slot].expected) sendFlush(job, slot);
  if (job.cluster) maybeCloseCluster(job);
}

void JobManager::sendFlush(const Job& job, size_t leaf) {
  send(roundDescriptor(job, job.instances[leaf],
                       DescriptorKind::Flush));  // after the slot's updates on the same socket: the
                                                 // router keeps the order
}

void JobManager::onModel(const Descriptor& d) {
  // The checkpoint (the model file can be hundreds of MB) is written after the lock is
  // released: the new model is served, and updates admitted, while it is being saved.
  std::optional<ModelLease> checkpoint;
  std::string checkpointJob;
  nlohmann::json checkpointState;
  ScopeExit save([&] {
    if (!checkpoint) return;
    if (auto saved = checkpoints_.saveModel(checkpointJob, checkpoint->round, checkpoint->object);
        !saved)
      LIFL_ERROR("job " << checkpointJob << ": " << saved.error().detail);
    if (auto saved = checkpoints_.saveState(checkpointJob, checkpointState); !saved)
      LIFL_ERROR("job " << checkpointJob << ": " << saved.error().detail);
    store_.release(checkpoint->object.handle());
    std::lock_guard relock(mutex_);  // a job this round finished: its model is saved now
    if (auto job = find(checkpointJob)) offloadModel(*job.value());
  });
  std::lock_guard lock(mutex_);
  const Job* completed = nullptr;
  ScopeExit captureState([&] {  // runs first, still under the lock: the job's final state
    if (checkpoint && completed) checkpointState = savedState(*completed);
  });
  auto it = bySlot_.find(d.job);
  auto model = store_.resolve(d);
  if (!model) return;
  if (it == bySlot_.end() || it->second->state != State::Active || d.round != it->second->round) {
    store_.release(model.value().handle());  // a stale publication (e.g. from a replaced top)
    return;
  }
  Job& job = *it->second;
  model.value().setOwner(kAgentInstance);
  if (job.model) store_.release(*job.model);
  job.model = model.value().handle();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - job.roundStart).count();
  const auto clients = static_cast<uint32_t>(d.value);
  job.history.push_back(
      {job.round, clients, std::bit_cast<double>(d.correlation), seconds, job.closing,
       job.routedTotal ? double(job.stalenessSum) / job.routedTotal : 0.0, job.stalenessMax});
  const double arrivals = std::chrono::duration<double>(job.lastArrival - job.roundStart).count();
  if (arrivals > 0) job.arrivalRate = clients / arrivals;
  if (d.aux > 0) job.leafThroughput = 1e9 / d.aux;  // aux: the leaves' ns per update
  metrics_.roundCompleted(job.spec.id, seconds);
  metrics_.aggregationSeconds(
      job.spec.id,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - job.lastArrival).count());
  job.round++;
  if (job.cluster) return reportModel(job, d);
  if (checkpoints_.enabled()) {  // the checkpoint of the completed round (written below)
    store_.retain(model.value());
    checkpoint = ModelLease{model.value(), job.round, nullptr, 0};
    checkpointJob = job.spec.id;
    completed = &job;
  }
  LIFL_INFO("job " << job.spec.id << ": round " << job.round << " of " << job.spec.rounds
                   << " aggregated " << clients << " updates in " << seconds << " s");
  if (!job.closing && clients != job.spec.clientsPerRound)
    LIFL_ERROR("job " << job.spec.id << ": round covered " << clients << " updates, expected "
                      << job.spec.clientsPerRound);
  if (job.round >= job.spec.rounds) {
    finish(job, State::Done);
    return;
  }
  if (auto started = startRound(job); !started) {
    job.failure = started.error().detail;
    finish(job, State::Failed);
  }
}

}  // namespace lifl::dataplane
