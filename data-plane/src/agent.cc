#include "lifl/dataplane/agent.h"

#include <fcntl.h>
#include <pwd.h>
#include <sched.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <unordered_set>

#include "lifl/common/log.h"
#include "lifl/dataplane/cgroup_limits.h"

namespace lifl::dataplane {

Result<std::unique_ptr<Agent>> Agent::start(AgentConfig config, Planner planner,
                                            std::string executable) {
  std::unique_ptr<Agent> agent(new Agent(std::move(config)));
  AgentConfig& c = agent->config_;
  // One agent per data dir: the store named after it is adopted after a crash, which must
  // never happen to a segment that a live agent is using.
  std::error_code dirError;
  std::filesystem::create_directories(c.dataDir, dirError);
  agent->dataDirLock_.reset(
      ::open((c.dataDir + "/agent.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!agent->dataDirLock_) return systemError("open " + c.dataDir + "/agent.lock", errno);
  if (::flock(agent->dataDirLock_.get(), LOCK_EX | LOCK_NB) != 0)
    return makeError(409, "data_dir_in_use",
                     "another lifl agent is running on data dir " + c.dataDir);
  StoreConfig store{c.storePath, c.storeBytes, c.hugepages, /*adopt=*/true};
  std::optional<std::pair<uid_t, gid_t>> instanceUser;
  if (!c.functionsUser.empty()) {
    const passwd* user = ::getpwnam(c.functionsUser.c_str());
    if (!user)
      return makeError(400, "invalid_config",
                       "functions.user: no user named " + c.functionsUser + " on this node");
    if (::geteuid() != 0)
      return makeError(400, "invalid_config",
                       "functions.user needs the agent to run as root (it starts the instances "
                       "as that user)");
    instanceUser = {user->pw_uid, user->pw_gid};
    store.instanceGroup = user->pw_gid;
  }
  if (store.path.empty()) {
    // Named after the data dir: a restart of the same node replaces its previous segment
    // (even one left by a kill -9) instead of leaking it in /dev/shm.
    std::error_code ec;
    const auto dir = std::filesystem::weakly_canonical(c.dataDir, ec).string();
    char name[32];
    std::snprintf(name, sizeof(name), "lifl-%016zx", std::hash<std::string>{}(dir));
    store.path = (c.hugepages ? c.hugepageDir : std::string("/dev/shm")) + "/" + name;
  }
  LIFL_TRY(created, ObjectStore::create(store));
  agent->store_ = std::move(created);
  LIFL_TRY(router, makeRouter(c.router, c.routerOptions(store.path)));
  agent->router_ = std::move(router);
  LIFL_TRY(endpoint, agent->router_->attachHere(kAgentInstance));
  agent->endpoint_ = std::move(endpoint);
  agent->metrics_ = std::make_unique<Metrics>();
  agent->supervisor_ = std::make_unique<Supervisor>(
      *agent->router_, *agent->store_, *agent->endpoint_, std::move(executable), c.warmPool);
  agent->supervisor_->setKeepAlive(c.keepAliveSeconds);
  if (instanceUser) agent->supervisor_->setInstanceUser(instanceUser->first, instanceUser->second);
  agent->jobs_ = std::make_unique<JobManager>(
      *agent->store_, *agent->endpoint_, *agent->supervisor_, *agent->metrics_, std::move(planner),
      c.idleSeconds, JobCheckpoints(c.dataDir));
  agent->chains_ =
      std::make_unique<ChainManager>(*agent->store_, *agent->endpoint_, *agent->supervisor_);
  {
    Router* router = agent->router_.get();
    Supervisor* supervisor = agent->supervisor_.get();
    agent->jobs_->setAutoscale(
        [router, supervisor](InstanceId id) -> uint64_t {
          const uint64_t delivered = router->counters(id).deliveredMsgs;
          const uint64_t processed = supervisor->processed(id);
          return delivered > processed ? delivered - processed : 0;
        },
        c.scaleUpQueueDepth);
    agent->chains_->setAutoscale(
        [router, supervisor](InstanceId id) -> uint64_t {
          const uint64_t delivered = router->counters(id).deliveredMsgs;
          const uint64_t processed = supervisor->processed(id);
          return delivered > processed ? delivered - processed : 0;
        },
        c.scaleUpQueueDepth, c.idleSeconds);
    agent->jobs_->setColocation(c.colocateRoles);
    agent->jobs_->setUpdateBuffer(c.maxBufferedUpdates);
    agent->jobs_->setDefaultDevice(c.device);
  }
  // A standalone agent issues client tokens itself; a cluster member checks the controller's.
  LIFL_TRY(access, AccessPolicy::create(c.security, c.dataDir,
                                        c.cluster.controller.empty() ? lifl::PolicyRole::Standalone
                                                                     : lifl::PolicyRole::Member));
  agent->access_ = std::move(access);
  if (!c.cluster.controller.empty()) {
    ClusterConfig cc = c.cluster;
    cc.clusterToken = agent->access_->clusterToken();
    AccessPolicy* access = agent->access_.get();
    cc.onPublicKey = [access](const std::string& key) {
      if (auto set = access->setPublicKey(key); !set)
        LIFL_WARN("the controller's public key: " << set.error().toString());
    };
    agent->cluster_ = std::make_unique<ClusterLink>(cc, *agent->store_);
    agent->jobs_->setCluster(agent->cluster_.get());
  }
  Agent* self = agent.get();
  agent->supervisor_->onDeath([self](InstanceId id, pid_t, int) { self->onInstanceDeath(id); });
  agent->reader_ = std::thread([self] { self->readEndpoint(); });
  if (agent->store_->adopted()) {  // a previous agent of this node died: keep its ids apart
    InstanceId highest = kFirstFunctionInstance;
    agent->store_->forEach([&](const ObjectRef& o) {
      highest = std::max({highest, o.owner(), o.producer()});
    });
    agent->supervisor_->startIdsAbove(highest);
    LIFL_WARN("adopted the object store " << store.path << " of a previous agent: "
                                          << agent->store_->stats().liveObjects << " objects");
  }
  LIFL_TRYV(agent->supervisor_->start());
  agent->jobs_->restore();
  LIFL_TRYV(agent->chains_->deploy(c.chains));
  agent->gateway_ = std::make_unique<Gateway>(
      c, *agent->jobs_, *agent->chains_, *agent->store_, *agent->metrics_, *agent->access_,
      GatewayHooks{[self] { return self->ready_.load(); }, [self] { self->refreshMetrics(); },
                   [self] { return self->describeInstances(); },
                   [self] { return self->describeStore(); }, agent->cluster_.get()});
  LIFL_TRY(port, agent->gateway_->start());
  agent->port_ = port;
  if (agent->cluster_) LIFL_TRYV(agent->joinCluster());
  agent->ready_ = true;
  LIFL_INFO("agent ready: router "
            << agent->router_->name() << ", store " << store.path << " (" << (c.storeBytes >> 20)
            << " MiB), " << c.warmPool << " warm instances, "
            << (c.gatewayTls.enabled() ? "https://" : "http://") << c.bind << ":" << port);
  return agent;
}

// Registration needs the gateway's port (the URL other nodes and the controller use).
Result<void> Agent::joinCluster() {
  auto& cc = const_cast<ClusterConfig&>(cluster_->config());
  if (cc.nodeName.empty()) {
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    cc.nodeName = host;
  }
  if (cc.advertiseUrl.empty()) {
    if (config_.bind == "0.0.0.0")
      return badRequest("invalid_config",
                        "cluster.advertise_url is needed when the gateway binds 0.0.0.0");
    cc.advertiseUrl = std::string(config_.gatewayTls.enabled() ? "https://" : "http://") +
                      config_.bind + ":" + std::to_string(port_);
  }
  if (cc.slots == 0) {  // 4 a CPU this agent may use: its affinity, within its cgroup's limit
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    double n = ::sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    if (const double limit = cgroupCpuLimit(); limit > 0) n = std::min(n, std::ceil(limit));
    cc.slots = static_cast<uint32_t>(4 * std::max(n, 1.0));
  }
  cluster_->start(
      [this, model = servedModel(config_.chains), role = servedModelRole(config_.chains)] {
        const auto s = store_->stats();
        const auto sup = supervisor_->stats();
        nlohmann::json stats = {{"store_live_bytes", s.liveBytes},
                                {"store_capacity_bytes", s.capacityBytes},
                                {"instances_warm", sup.warm},
                                {"instances_busy", sup.busy},
                                {"cold_starts", sup.coldStarts}};
        // Where the controller tells every gateway the completions of this model may go.
        if (!model.empty())
          stats["models"] = {
              {{"name", model}, {"role", role}, {"in_flight", gateway_->completionsInFlight()}}};
        return stats;
      });
  LIFL_INFO("cluster mode: node " << cc.nodeName << " at " << cc.advertiseUrl << ", controller "
                                  << cc.controller);
  return success();
}

Agent::~Agent() { stop(); }

void Agent::stop() {
  if (stopping_.exchange(true)) return;
  ready_ = false;
  if (supervisor_) supervisor_->beginShutdown();  // deaths from here on are the shutdown's
  if (gateway_) gateway_->stop();
  cluster_.reset();
  if (supervisor_) supervisor_->stop();
  if (endpoint_) endpoint_->shutdownReceive();
  if (reader_.joinable()) reader_.join();
}

void Agent::onInstanceDeath(InstanceId id) {
  metrics_->forgetInstance(id);
  if (uint32_t n = store_->reclaimIncomplete(id))
    LIFL_WARN("reclaimed " << n << " objects instance " << id << " left half-built");
  if (chains_->owns(id))
    chains_->onInstanceDeath(id);
  else
    jobs_->onInstanceDeath(id);
}

void Agent::readEndpoint() {
  while (!stopping_) {
    auto next = endpoint_->receive(-1);  // woken by shutdownReceive() at stop
    if (!next) {
      if (!stopping_) LIFL_ERROR("agent endpoint: " << next.error().detail);
      return;
    }
    if (!next.value()) continue;
    const Descriptor& d = *next.value();
    switch (d.kind) {
      case DescriptorKind::Model:
        jobs_->onModel(d);
        break;
      case DescriptorKind::Ack:
        jobs_->onAck(d);
        break;
      case DescriptorKind::Done:
        jobs_->onLeafDone(d);
        break;
      case DescriptorKind::Partial:  // a node subtree's partial, bound for the root node
        jobs_->onPartial(d);
        break;
      case DescriptorKind::Reply:
      case DescriptorKind::Failure:
        chains_->onReply(d);
        break;
      case DescriptorKind::Stream:
        chains_->onStream(d);
        break;
      case DescriptorKind::Event:  // a chain hop's event for a routed next hop
        chains_->route(d);
        break;
      default:
        LIFL_WARN("agent got an unexpected " << kindName(d.kind) << " from " << d.src);
    }
  }
}

nlohmann::json Agent::describeInstances() const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& i : supervisor_->instances()) {
    const auto c = router_->counters(i.id);
    out.push_back(
        {{"id", i.id},
         {"pid", i.pid},
         {"busy", i.busy},
         {"function", i.function},
         {"processed_messages", i.processed},
         {"queue_depth", c.deliveredMsgs > i.processed ? c.deliveredMsgs - i.processed : 0},
         {"delivered_messages", c.deliveredMsgs},
         {"sent_messages", c.sentMsgs},
         {"dropped_messages", c.droppedMsgs}});
  }
  return out;
}

nlohmann::json Agent::describeStore() const {
  static constexpr const char* kKinds[] = {"?", "update", "partial", "model", "event", "control"};
  const auto stats = store_->stats();
  const auto held = supervisor_->heldObjects();  // the instances' processed counters
  const std::unordered_set<uint64_t> counters(held.begin(), held.end());
  nlohmann::json objects = nlohmann::json::array();
  store_->forEach([&](const ObjectRef& o) {
    if (objects.size() >= 1000) return;  // a bounded answer
    const auto kind = static_cast<size_t>(o.kind());
    const bool counter = counters.count(o.handle().generation) > 0;
    objects.push_back({{"generation", o.handle().generation},
                       {"kind", counter ? "counter" : kKinds[kind < 6 ? kind : 0]},
                       {"bytes", o.capacity()},
                       {"owner", o.owner()},
                       {"producer", o.producer()},
                       {"job", o.job()},
                       {"round", o.round()},
                       {"sealed", o.sealed()},
                       {"container", o.container()},
                       {"refcount", o.refcount()}});
  });
  return {{"capacity_bytes", stats.capacityBytes},
          {"free_bytes", stats.freeBytes},
          {"live_objects", stats.liveObjects},
          {"live_bytes", stats.liveBytes},
          {"objects", objects}};
}

void Agent::refreshMetrics() {
  const auto s = store_->stats();
  const auto sup = supervisor_->stats();
  metrics_->nodeState({s.capacityBytes, s.freeBytes, s.liveBytes, s.liveObjects, sup.warm, sup.busy,
                       sup.coldStarts, sup.deaths, jobs_->aggregatorsByRole(),
                       cluster_ ? cluster_->bytesSent() : 0,
                       cluster_ ? cluster_->bytesReceived() : 0});
  for (const auto& inst : supervisor_->instances()) {
    auto c = router_->counters(inst.id);
    metrics_->routerCounters(inst.id, c.deliveredMsgs, c.deliveredBytes);
  }
  auto c = router_->counters(kAgentInstance);
  metrics_->routerCounters(kAgentInstance, c.deliveredMsgs, c.deliveredBytes);
}

}  // namespace lifl::dataplane
