#include "lifl/dataplane/job_manager.h"

#include <bit>
#include <cstring>
#include <utility>

#include "lifl/common/log.h"
#include "lifl/common/scope_exit.h"
#include "lifl/dataplane/partial.h"
#include "lifl/dataplane/safetensors.h"
#include "lifl/gpu/accumulate.h"

namespace lifl::dataplane {

namespace {
constexpr const char* kAggregator = "fl.aggregator";

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
std::string acceptKey(const UpdateMeta& m) { return m.source + '\n' + m.id; }

/// 64-bit FNV-1a of an accept key: the client key carried by updates and partials.
uint64_t clientKeyOf(const std::string& acceptKey) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : acceptKey) h = (h ^ c) * 0x100000001b3ull;
  return h ? h : 1;  // 0 means unknown
}
}  // namespace

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

bool JobManager::send(Descriptor d) {
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
  nlohmann::json p = {{"role", roleName(n.role)},
                      {"parent", n.parent >= 0 ? job.instances[static_cast<size_t>(n.parent)] : 0},
                      {"expected", expected},
                      {"batch", job.spec.batch},
                      {"eager", job.spec.eager},
                      {"job", job.slot},
                      {"round", job.round},
                      {"tensors", tensors},
                      {"base", nullptr}};
  if (n.role == AggregatorRole::Top && job.spec.update == UpdateMode::Delta && job.model)
    p["base"] = {{"offset", job.model->offset},
                 {"length", job.model->length},
                 {"generation", job.model->generation}};
  return p;
}

Result<void> JobManager::deployTree(Job& job) {
  // Reuse the instances of the previous round (warm, same processes); take more from the
  // pool only when the tree grew, and give back what it no longer needs.
  while (job.instances.size() > job.plan.nodes.size()) {
    supervisor_.release(job.instances.back());
    job.instances.pop_back();
  }
  while (job.instances.size() < job.plan.nodes.size()) {
    LIFL_TRY(id, supervisor_.reserve());
    job.instances.push_back(id);
  }
  for (size_t i = 0; i < job.plan.nodes.size(); ++i)
    LIFL_TRYV(supervisor_.assign(job.instances[i], kAggregator,
                                 aggregatorParams(job, i, job.plan.nodes[i].expected)));
  job.scaledToZero = false;
  return success();
}

Result<void> JobManager::startRound(Job& job, uint32_t coveredByPartials) {
  const uint32_t viaLeaves = job.spec.clientsPerRound > coveredByPartials
                                 ? job.spec.clientsPerRound - coveredByPartials
                                 : 0;
  job.plan = planner_(
      PlanRequest{viaLeaves, job.spec.fanIn, job.spec.levels, job.arrivalRate, job.leafThroughput});
  job.plan.nodes[static_cast<size_t>(job.plan.top())].expected += coveredByPartials;
  LIFL_TRYV(deployTree(job));
  job.received = 0;
  job.routedTotal = 0;
  job.routed.assign(job.plan.leaves, 0);
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
    if (update) route(job, update.value(), p.meta);
  }
  return success();
}

void JobManager::finish(Job& job, State state) {
  job.state = state;
  persist(job);
  for (const auto& p : std::exchange(job.parked, {})) store_.release(p.object);
  for (InstanceId id : job.instances) supervisor_.release(id);
  job.instances.clear();
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
  nlohmann::json plan = job.plan.toJson();
  plan["instances"] = job.instances;
  nlohmann::json out = {
      {"id", job.spec.id},
      {"state", state},
      {"round", job.round},
      {"rounds", job.spec.rounds},
      {"received", job.received},
      {"expected", job.spec.clientsPerRound},
      {"strategy", job.spec.strategy},
      {"update", job.spec.update == UpdateMode::Delta ? "delta" : "weights"},
      {"plan", plan},
      {"has_model", job.model.has_value()},
      {"history", history},
      {"recoveries", job.recoveries},
      {"late",
       {{"dropped", job.lateDropped}, {"folded", job.lateFolded}, {"waiting", job.parked.size()}}},
      {"closing", job.closing},
      {"scaled_to_zero", job.scaledToZero},
      {"lost", {{"on_restart", job.lostOnRestart}}},
      {"spec", job.spec.toJson()}};
  if (!job.failure.empty()) out["failure"] = job.failure;
  return out;
}

std::map<std::string, uint64_t> JobManager::aggregatorsByRole() const {
  std::lock_guard lock(mutex_);
  std::map<std::string, uint64_t> out;
  for (const auto& [_, job] : jobs_)
    if (job->state == State::Active)
      for (const auto& node : job->plan.nodes) out[roleName(node.role)]++;
  return out;
}

namespace {
const char* stateName(int s) {
  static const char* kNames[] = {"active", "done", "cancelled", "failed"};
  return kNames[s];
}
}  // namespace

nlohmann::json JobManager::savedState(const Job& job) const {
  nlohmann::json history = nlohmann::json::array();
  for (const auto& r : job.history)
    history.push_back({r.round, r.clients, r.weight, r.seconds, r.byDeadline});
  return {{"spec", job.spec.toJson()},
          {"slot", job.slot},
          {"round", job.round},
          {"state", stateName(static_cast<int>(job.state))},
          {"history", history},
          {"failure", job.failure},
          {"late_dropped", job.lateDropped},
          {"late_folded", job.lateFolded},
          {"recoveries", job.recoveries},
          {"lost_on_restart", job.lostOnRestart}};
}

void JobManager::persist(const Job& job, bool withModel) const {
  if (!checkpoints_.enabled()) return;
  if (withModel && job.model) {
    auto model = store_.resolve(*job.model);
    if (model) {
      if (auto saved = checkpoints_.saveModel(job.spec.id, job.round, model.value()); !saved)
        LIFL_ERROR("job " << job.spec.id << ": " << saved.error().detail);
    }
  }
  if (auto saved = checkpoints_.saveState(job.spec.id, savedState(job)); !saved)
    LIFL_ERROR("job " << job.spec.id << ": " << saved.error().detail);
}

// The round a restart interrupted. If the previous agent's store was adopted, what it holds
// for this round is classified like a crash recovery of every aggregator at once: sealed
// partials not folded into another sealed partial carry their clients' sums (they go to the
// new top); updates no sealed partial covers are re-routed to the new leaves; the rest is
// covered or half-built and freed. Accepted updates that did not survive are reported lost.
void JobManager::recoverRound(Job& job,
                              const std::vector<std::pair<std::string, std::string>>& accepted) {
  std::unordered_map<uint64_t, ObjectRef> live;
  std::vector<ObjectRef> mine;
  store_.forEach([&](const ObjectRef& o) {
    live.emplace(o.handle().generation, o);
    if (o.job() == job.slot) mine.push_back(o);
  });
  auto coveredBySealed = [&](const ObjectRef& o) {
    auto c = o.container() ? live.find(o.container()) : live.end();
    return c != live.end() && c->second.sealed() && c->second.kind() == ObjectKind::Partial;
  };
  std::vector<ObjectRef> partials, updates;
  uint32_t coveredClients = 0;
  for (const auto& o : mine) {
    const bool current = o.round() == job.round;
    if (current && o.kind() == ObjectKind::Partial && o.sealed() && !coveredBySealed(o) &&
        PartialView(o).valid()) {
      partials.push_back(o);
      coveredClients += PartialView(o).header().clients;
    } else if (current && o.kind() == ObjectKind::Update && !coveredBySealed(o)) {
      updates.push_back(o);
    } else if (!job.model || o.handle().generation != job.model->generation) {
      store_.release(o.handle());  // covered, half-built, or another round's
    }
  }
  if (auto started = startRound(job, coveredClients); !started) {
    job.failure = "cannot restart: " + started.error().detail;
    job.state = State::Failed;
    return;
  }
  // Which accepted updates survived, by client key: those stay accepted (a retry is a
  // duplicate); the others are lost, reported, and their clients may push them again.
  std::unordered_set<uint64_t> surviving;
  for (const auto& p : partials) {
    PartialView view(p);
    for (uint32_t i = 0; i < std::min(view.header().clients, view.header().keyCapacity); ++i)
      surviving.insert(view.keys()[i]);
  }
  for (const auto& u : updates) surviving.insert(u.clientKey());
  std::vector<std::pair<std::string, std::string>> kept;
  for (const auto& [source, id] : accepted) {
    const std::string key = source + '\n' + id;
    if (!surviving.count(clientKeyOf(key))) continue;
    job.sources[source] = id;
    job.accepted.insert(key);
    kept.emplace_back(source, id);
  }
  job.lostOnRestart += accepted.size() - kept.size();
  checkpoints_.rewriteJournal(job.spec.id, job.round, kept);  // lost ones are counted once
  const InstanceId top = job.instances[static_cast<size_t>(job.plan.top())];
  for (const auto& p : partials) {
    Descriptor d{};
    d.dst = top;
    d.kind = DescriptorKind::Partial;
    d.job = job.slot;
    d.round = job.round;
    p.describe(d);
    send(d);  // its inputs were released above; the ack has nothing left to free
  }
  job.received += coveredClients;
  for (const auto& u : updates) {
    UpdateMeta meta;
    meta.numExamples = u.value();
    route(job, u, meta, /*recovered=*/true);
  }
}

void JobManager::restore() {
  std::lock_guard lock(mutex_);
  // What an adopted store held before this agent made anything (its own objects, such as
  // the assignments of the trees restored below, are not the previous agent's leftovers).
  std::unordered_set<uint64_t> inherited;
  store_.forEach([&](const ObjectRef& o) { inherited.insert(o.handle().generation); });
  for (auto& saved : checkpoints_.load()) {
    const auto& st = saved.state;
    auto spec = jobSpecFromJson(st.value("spec", nlohmann::json::object()));
    if (!spec) {
      LIFL_WARN("skipping a saved job: " << spec.error().detail);
      continue;
    }
    auto job = std::make_unique<Job>();
    job->spec = std::move(spec).value();
    if (jobs_.count(job->spec.id)) continue;
    job->slot = st.value("slot", 0u);
    if (job->slot == 0 || bySlot_.count(job->slot)) job->slot = nextSlot_;
    nextSlot_ = std::max(nextSlot_, job->slot + 1);
    job->round = st.value("round", 0u);
    const std::string state = st.value("state", "active");
    job->state = state == "done"        ? State::Done
                 : state == "cancelled" ? State::Cancelled
                 : state == "failed"    ? State::Failed
                                        : State::Active;
    for (const auto& r : st.value("history", nlohmann::json::array()))
      job->history.push_back({r[0], r[1], r[2], r[3], r[4]});
    job->failure = st.value("failure", "");
    job->lateDropped = st.value("late_dropped", 0ull);
    job->lateFolded = st.value("late_folded", 0ull);
    job->recoveries = st.value("recoveries", 0ull);
    job->lostOnRestart = st.value("lost_on_restart", 0ull);
    if (saved.model) {
      auto model = store_.allocate(saved.model->size(), ObjectKind::Model, kAgentInstance);
      if (model) {
        std::memcpy(model.value().data(), saved.model->data(), saved.model->size());
        auto view = parseSafetensors(model.value().data(), model.value().size());
        if (view && checkMatchesModel(view.value(), job->spec)) {
          model.value().setTag(job->slot, job->round);
          model.value().seal();
          job->model = model.value().handle();
        } else {
          store_.release(model.value().handle());
          LIFL_WARN("job " << job->spec.id << ": its saved model does not match its spec");
        }
      }
    }
    if (job->state == State::Active) recoverRound(*job, saved.accepted);
    LIFL_INFO("job " << job->spec.id << " restored at round " << job->round << " (" << state << ", "
                     << job->received << " updates of the round recovered, " << job->lostOnRestart
                     << " lost in all)");
    Job* raw = job.get();
    bySlot_[raw->slot] = raw;
    jobs_[raw->spec.id] = std::move(job);
    persist(*raw);
  }
  // Whatever else an adopted store holds belongs to no restored round.
  std::unordered_set<uint64_t> models;
  std::unordered_set<uint32_t> activeSlots;
  for (const auto& [_, job] : jobs_) {
    if (job->model) models.insert(job->model->generation);
    if (job->state == State::Active) activeSlots.insert(job->slot);
  }
  store_.forEach([&](const ObjectRef& o) {
    const uint64_t g = o.handle().generation;
    if (inherited.count(g) && !models.count(g) && !activeSlots.count(o.job()))
      store_.release(o.handle());
  });
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

Result<std::pair<JobManager::Job*, SafetensorsView>> JobManager::validated(
    const std::string& id, const ObjectRef& body) const {
  Job* job = nullptr;
  {
    std::lock_guard lock(mutex_);
    LIFL_TRY(found, find(id));
    job = found;
  }
  // Outside the lock (a job's spec never changes), so uploads are validated in parallel.
  LIFL_TRY(view, parseSafetensors(body.data(), body.size()));
  LIFL_TRYV(checkMatchesModel(view, job->spec));
  LIFL_TRYV(checkFinite(body.data(), view));
  return std::make_pair(job, std::move(view));
}

Result<void> JobManager::setModel(const std::string& id, const ObjectRef& uploaded) {
  LIFL_TRY(checked, validated(id, uploaded));
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
  if (!job->model) return notFound("no_model", "job " + id + " has no model yet");
  LIFL_TRY(model, store_.resolve(*job->model));
  store_.retain(model);
  return ModelLease{model, job->round};
}

void JobManager::returnModel(const ModelLease& lease) { store_.release(lease.object.handle()); }

Result<Admission> JobManager::admit(const std::string& id, UpdateMeta& meta) {
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
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
  // Late: for a round that has closed (at its deadline, or complete).
  meta.late = meta.round < job->round || job->closing;
  if (meta.late && job->spec.late == LatePolicy::Drop) {
    job->lateDropped++;
    return conflict("late_update", "round " + std::to_string(meta.round) +
                                       " has closed; this job drops late updates");
  }
  if (job->spec.update == UpdateMode::Delta && !job->model)
    return conflict("no_model", "a delta job needs its initial model before updates");
  if (job->scaledToZero) {
    if (auto deployed = deployTree(*job); !deployed)
      return unavailable("no_instances",
                         "cannot bring the job's aggregators back: " + deployed.error().detail);
  }
  // While the closed round is aggregated, a late update waits for the next one (parked).
  meta.parked = job->closing;
  auto& sources = meta.parked ? job->parkedSources : job->sources;
  if (auto s = sources.find(meta.source); s != sources.end()) {
    if (s->second == meta.id)
      return conflict("update_in_progress", "this update is still being received");
    return conflict("duplicate_client",
                    "client " + meta.source + " already sent a different update this round");
  }
  const uint32_t taken = meta.parked
                             ? static_cast<uint32_t>(job->parked.size()) + job->parkedReserved
                             : job->received + job->reserved;
  if (taken >= job->spec.clientsPerRound)
    return conflict("round_full", "round " + std::to_string(job->round) + " has all its updates");
  sources[meta.source] = meta.id;
  (meta.parked ? job->parkedReserved : job->reserved)++;
  if (!meta.parked && !job->roundStarted) {
    job->roundStarted = true;
    job->roundStart = std::chrono::steady_clock::now();
  }
  return Admission{false, meta.parked ? job->round + 1 : job->round, maxUpdateBytes(job->spec)};
}

void JobManager::abandon(const std::string& id, const UpdateMeta& meta) {
  std::lock_guard lock(mutex_);
  auto found = find(id);
  if (!found) return;
  Job* job = found.value();
  // A parked reservation moves into the round's when that round starts.
  const bool parked = meta.parked && job->closing;
  auto& sources = parked ? job->parkedSources : job->sources;
  if (auto s = sources.find(meta.source); s != sources.end() && s->second == meta.id) {
    sources.erase(s);
    (parked ? job->parkedReserved : job->reserved)--;
  }
}

Result<uint32_t> JobManager::commit(const std::string& id, const UpdateMeta& meta,
                                    ObjectRef update) {
  LIFL_TRY(checked, validated(id, update));
  Job* job = checked.first;
  std::lock_guard lock(mutex_);
  if (job->state != State::Active)
    return conflict("job_finished", "job " + id + " was cancelled while the update arrived");
  if (job->closing && !meta.parked) {
    // Admitted before the deadline, complete after it: too late for the closed round.
    if (job->spec.late == LatePolicy::Drop) {
      job->lateDropped++;
      return conflict("late_update", "round " + std::to_string(job->round) +
                                         " closed at its deadline while this update arrived");
    }
    job->sources.erase(meta.source);
    job->reserved--;
    job->parkedSources[meta.source] = meta.id;
    job->parkedReserved++;
    UpdateMeta moved = meta;
    moved.late = moved.parked = true;
    job->parkedAccepted.insert(acceptKey(moved));
    job->parkedReserved--;
    update.setOwner(kAgentInstance);
    job->parked.push_back({update.handle(), moved});
    return job->round + 1;
  }
  if (meta.parked && job->closing) {
    job->parkedReserved--;
    job->parkedAccepted.insert(acceptKey(meta));
    update.setOwner(kAgentInstance);  // held by the agent until the next round's tree exists
    job->parked.push_back({update.handle(), meta});
    return job->round + 1;
  }
  job->reserved--;
  route(*job, update, meta);
  metrics_.updateAccepted(id, update.size());
  return job->round;
}

void JobManager::route(Job& job, ObjectRef update, const UpdateMeta& meta, bool recovered) {
  const uint32_t k = job.routedTotal++;  // slots count routed updates, not recovered sums
  job.received++;
  if (!recovered) {
    job.accepted.insert(acceptKey(meta));
    checkpoints_.journal(job.spec.id, job.round, meta.source, meta.id);
  }
  if (meta.late) job.lateFolded++;
  const size_t slot = std::min<size_t>(k / job.plan.fanIn, job.plan.leaves - 1);
  job.lastArrival = std::chrono::steady_clock::now();
  const InstanceId leaf = job.instances[slot];
  update.setTag(job.slot, job.round);
  update.setValue(meta.numExamples);
  if (!recovered) update.setClientKey(clientKeyOf(acceptKey(meta)));
  update.setOwner(leaf);  // from here the leaf (or, if it dies, its replacement) is responsible
  Descriptor d{};
  d.dst = leaf;
  d.kind = DescriptorKind::Update;
  d.job = job.slot;
  d.round = job.round;
  d.value = meta.numExamples;
  update.describe(d);
  // A failed send means the leaf just died: the object is owned by it, and recovery
  // re-delivers it to the replacement. The update is accepted either way.
  send(d);
  if (++job.routed[slot] == job.plan.nodes[slot].expected) sendFlush(job, slot);
}

void JobManager::sendFlush(const Job& job, size_t leaf) {
  Descriptor d{};
  d.dst = job.instances[leaf];
  d.kind = DescriptorKind::Flush;
  d.job = job.slot;
  d.round = job.round;
  send(d);  // after the slot's updates on the same socket: the router keeps the order
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
      {job.round, clients, std::bit_cast<double>(d.correlation), seconds, job.closing});
  const double arrivals = std::chrono::duration<double>(job.lastArrival - job.roundStart).count();
  if (arrivals > 0) job.arrivalRate = clients / arrivals;
  if (d.aux > 0) job.leafThroughput = 1e9 / d.aux;  // aux: the leaves' ns per update
  metrics_.roundCompleted(job.spec.id, seconds);
  metrics_.aggregationSeconds(
      job.spec.id,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - job.lastArrival).count());
  job.round++;
  if (checkpoints_.enabled()) {  // the checkpoint of the completed round (written below)
    store_.retain(model.value());
    checkpoint = ModelLease{model.value(), job.round};
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

void JobManager::watchDeadlines() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    stopDeadlines_.wait_for(lock, std::chrono::milliseconds(50));
    const auto now = std::chrono::steady_clock::now();
    for (auto& [_, job] : jobs_) {
      if (job->state != State::Active || job->closing) continue;
      const double open = std::chrono::duration<double>(now - job->roundOpened).count();
      if (!job->scaledToZero && job->received + job->reserved == 0 && job->parked.empty() &&
          open >= idleSeconds_) {
        // Serverless scale to zero: an idle round gives its aggregators back to the pool
        // (which keeps only its warm target); the next update brings a tree back.
        LIFL_INFO("job " << job->spec.id << ": idle for " << open << " s, scaling to zero");
        for (InstanceId id : job->instances) supervisor_.release(id);
        job->instances.clear();
        job->scaledToZero = true;
      }
      if (open < job->spec.deadlineSeconds) continue;
      if (job->received >= job->spec.requiredClients() && job->received > 0) {
        closeAtDeadline(*job);
      } else {
        failRound(*job, "round " + std::to_string(job->round) + " reached its deadline of " +
                            std::to_string(job->spec.deadlineSeconds) + " s with " +
                            std::to_string(job->received) + " of the " +
                            std::to_string(job->spec.requiredClients()) + " updates it needs");
      }
    }
  }
}

// Closes a round at its deadline with the updates routed so far: leaves that will get no
// more updates are flushed, and every middle and the top are told how many clients their
// subtree now covers. Updates still arriving are late (dropped, or parked for the next
// round). The tree's expectations are rewritten so that a crash recovery uses them too.
void JobManager::closeAtDeadline(Job& job) {
  job.closing = true;
  LIFL_INFO("job " << job.spec.id << ": round " << job.round << " closes at its deadline with "
                   << job.received << " of " << job.spec.clientsPerRound << " updates");
  std::vector<uint32_t> covered(job.plan.nodes.size(), 0);
  for (size_t node = 0; node < job.plan.nodes.size(); ++node) {  // children before parents
    PlanNode& n = job.plan.nodes[node];
    if (node < job.plan.leaves) covered[node] += job.routed[node];  // a routing slot
    if (n.role == AggregatorRole::Leaf) {
      if (job.routed[node] < n.expected) sendFlush(job, node);  // a full slot was flushed
    } else {
      Descriptor d{};
      d.dst = job.instances[node];
      d.kind = DescriptorKind::Retarget;
      d.job = job.slot;
      d.round = job.round;
      d.value = covered[node];
      send(d);
    }
    n.expected = covered[node];
    if (n.parent >= 0) covered[static_cast<size_t>(n.parent)] += covered[node];
  }
}

void JobManager::failRound(Job& job, std::string reason) {
  LIFL_ERROR("job " << job.spec.id << ": " << reason);
  job.failure = std::move(reason);
  finish(job, State::Failed);  // released instances free what they held
}

void JobManager::onAck(const Descriptor& d) {
  // Acks for partials the agent re-sent on behalf of a dead aggregator: release the inputs
  // recorded at recovery (the partial itself may already be freed by its parent).
  std::lock_guard lock(mutex_);
  auto it = resentInputs_.find(d.generation);
  if (it == resentInputs_.end()) return;
  for (const auto& h : it->second) {
    auto in = store_.resolve(h);
    if (in && in.value().container() == d.generation && in.value().owner() == kAgentInstance)
      store_.release(h);
  }
  resentInputs_.erase(it);
}

void JobManager::onInstanceDeath(InstanceId dead) {
  std::lock_guard lock(mutex_);
  for (auto& [_, job] : jobs_) {
    if (job->state != State::Active) continue;
    for (size_t node = 0; node < job->instances.size(); ++node) {
      if (job->instances[node] == dead) {
        recover(*job, node, dead);
        return;
      }
    }
  }
  reclaimUnowned(dead);
}

void JobManager::reclaimUnowned(InstanceId dead) {
  for (const auto& object : store_.ownedBy(dead)) store_.release(object.handle());
}

// Recovery after an aggregator died (DESIGN.md invariant 4). What the dead instance owned
// tells exactly where each accepted update is:
//  - a sealed partial it produced covers its inputs: re-send it to the parent (which drops
//    duplicates) and release the inputs when the parent acknowledges;
//  - an unsealed partial was its accumulator: the sums in it are lost, so drop it...
//  - ...and re-deliver every input not covered by a sealed partial to a replacement, which
//    is assigned the same role for the clients not yet covered.
void JobManager::recover(Job& job, size_t node, InstanceId dead) {
  job.recoveries++;
  const PlanNode& planNode = job.plan.nodes[node];
  const InstanceId parent =
      planNode.parent >= 0 ? job.instances[static_cast<size_t>(planNode.parent)] : 0;
  const auto owned = store_.ownedBy(dead);

  // Classify first, act after: releasing while classifying would let a later lookup read a
  // freed header.
  std::unordered_map<uint64_t, ObjectRef> live;
  store_.forEach([&](const ObjectRef& o) { live.emplace(o.handle().generation, o); });

  // Clients already inside sealed partials of the dead instance, wherever they are now (its
  // parent holds the ones it acknowledged until its own batch is acknowledged).
  uint32_t covered = 0;
  for (const auto& [gen, o] : live)
    if (o.kind() == ObjectKind::Partial && o.producer() == dead && o.sealed() &&
        o.round() == job.round && o.job() == job.slot)
      covered += PartialView(o).header().clients;

  std::vector<ObjectRef> redeliver, release;
  for (const auto& o : owned) {
    if (o.kind() == ObjectKind::Model) continue;  // a publication on its way to the agent
    if (o.round() != job.round || o.job() != job.slot || o.kind() == ObjectKind::Control) {
      release.push_back(o);  // a finished round's leftovers, an unread assignment
      continue;
    }
    if (o.kind() == ObjectKind::Partial && o.producer() == dead) {
      if (!o.sealed()) {
        release.push_back(o);  // the dead accumulator: its inputs are re-delivered below
        continue;
      }
      resentInputs_[o.handle().generation];  // its inputs are added below
      Descriptor d{};
      d.dst = parent;
      d.kind = DescriptorKind::Partial;
      d.job = job.slot;
      d.round = job.round;
      o.describe(d);
      send(d);  // the parent acks to the agent (duplicates too); onAck releases the inputs
      continue;
    }
    // An input: an update, or a child's partial.
    auto container = o.container() ? live.find(o.container()) : live.end();
    if (o.container() == 0 || (container != live.end() && !container->second.sealed())) {
      redeliver.push_back(o);  // not counted anywhere yet
    } else if (container != live.end() && container->second.owner() == dead) {
      o.setOwner(kAgentInstance);  // in a sealed partial re-sent above: held until its ack
      resentInputs_[o.container()].push_back(o.handle());
    } else {
      release.push_back(o);  // in a partial its parent already folded
    }
  }
  for (const auto& o : release) store_.release(o.handle());

  const uint32_t remaining = planNode.expected > covered ? planNode.expected - covered : 0;
  LIFL_WARN("job " << job.spec.id << ": " << roleName(planNode.role) << " " << dead
                   << " died in round " << job.round << "; " << covered
                   << " updates covered by sealed partials, " << redeliver.size()
                   << " inputs to re-deliver");

  auto replacement = supervisor_.reserve();
  if (!replacement) {
    job.failure = "cannot replace aggregator: " + replacement.error().detail;
    LIFL_ERROR(job.failure);
    finish(job, State::Failed);
    return;
  }
  const InstanceId fresh = replacement.value();
  job.instances[node] = fresh;
  if (auto assigned =
          supervisor_.assign(fresh, kAggregator, aggregatorParams(job, node, remaining));
      !assigned) {
    job.failure = "cannot assign replacement: " + assigned.error().detail;
    finish(job, State::Failed);
    return;
  }
  for (size_t child = 0; child < job.plan.nodes.size(); ++child) {
    if (job.plan.nodes[child].parent != static_cast<int>(node)) continue;
    Descriptor d{};
    d.dst = job.instances[child];
    d.kind = DescriptorKind::Reparent;
    d.job = job.slot;
    d.round = job.round;
    d.aux = fresh;
    send(d);
  }
  for (const auto& o : redeliver) {
    o.setOwner(fresh);
    Descriptor d{};
    d.dst = fresh;
    d.kind = o.kind() == ObjectKind::Update ? DescriptorKind::Update : DescriptorKind::Partial;
    d.job = job.slot;
    d.round = job.round;
    d.value = o.value();
    o.describe(d);
    send(d);
  }
  if (planNode.role == AggregatorRole::Leaf && job.routed[node] == planNode.expected)
    sendFlush(job, node);
}

}  // namespace lifl::dataplane
