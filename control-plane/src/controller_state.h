// The controller's state and the operations on it; one mutex guards all of it. Split by
// concern over controller_nodes.cc (registry, heartbeats, draining), controller_jobs.cc
// (jobs, admission, rounds, deadlines), controller_store.cc (durable state) and
// controller_http.cc (the REST surface).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "lifl/common/http_client.h"
#include "lifl/common/job_spec.h"
#include "lifl/control/cluster_plan.h"
#include "lifl/control/controller.h"
#include "lifl/control/http_server.h"
#include "node_commands.h"

namespace lifl::control {

using Clock = std::chrono::steady_clock;

struct NodeRecord {
  std::string name;
  std::string url;  ///< the agent's gateway, as the agent advertised it
  uint32_t slots = 0;
  bool live = true;
  Clock::time_point lastSeen;
  nlohmann::json stats;                    ///< the agent's last heartbeat
  std::shared_ptr<NodeCommands> commands;  ///< shared: a request may wait on it unlocked
};

/// One accepted update, as the controller knows it (the bytes stay on the node).
struct Admitted {
  std::string id;
  std::string node;
  uint64_t numExamples = 0;
};

struct ClusterJob {
  JobSpec spec;
  std::string state = "active";  ///< active, done, failed, cancelled
  uint32_t round = 0;
  uint32_t epoch = 0;  ///< bumped when a round restarts (its root node was lost)
  ClusterPlan plan;
  std::map<std::string, std::string> nodeUrls;  ///< nodes of the round
  std::map<std::string, Admitted> admitted;     ///< ce-source -> update of this round
  std::map<std::string, Admitted> next;         ///< late updates folded into the next round
  std::set<std::string> acceptedBefore;         ///< source + '\n' + id of the last round
  std::set<std::string> forwarded;              ///< nodes whose partial reached the root
  bool closing = false;
  bool closedByDeadline = false;
  Clock::time_point roundOpened;
  Clock::time_point closedAt;
  std::optional<Clock::time_point> firstAdmission;
  std::map<std::string, double> arrivals;  ///< per node, last completed round
  std::string modelSource;  ///< the gateway serving the current model (root of the last round)
  nlohmann::json history = nlohmann::json::array();
  nlohmann::json lost = nlohmann::json::array();
  uint64_t lateDropped = 0, lateFolded = 0;
  bool hasModel = false;  ///< a checkpoint of the current round's model is on disk
  std::string failure;
  bool active() const { return state == "active"; }
};

struct Controller::State {
  explicit State(ControllerConfig c);
  ~State();

  ControllerConfig config;
  std::unique_ptr<AccessPolicy> access;  ///< credentials (security.auth); allows all when off
  mutable std::mutex mutex;
  std::map<std::string, NodeRecord> nodes;
  std::map<std::string, std::unique_ptr<ClusterJob>> jobs;
  std::unique_ptr<HttpServer> server;
  /// Set once restore() has run: the server listens before (its port names the controller),
  /// and a report answered from the half-restored state would be lost (agents drop what is
  /// answered below 500), so everything but health checks is answered 503 until then.
  std::atomic<bool> restored{false};
  uint16_t port = 0;
  std::string selfUrl;  ///< where agents fetch checkpoints from (config.advertiseUrl)
  std::condition_variable wake;
  bool stopping = false;
  std::thread sweeper;  ///< heartbeats and deadlines
  /// Command queues of drained or moved nodes, destroyed by the sweeper without the lock.
  std::vector<std::shared_ptr<NodeCommands>> retiredCommands;
  struct ModelCopy {
    std::string job;
    uint32_t round;
    std::string url;
  };
  std::deque<ModelCopy> toCopy;  ///< model checkpoints to copy from root nodes, in order
  std::thread copier;

  // metrics
  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Family<prometheus::Counter>& admittedTotal;
  prometheus::Family<prometheus::Counter>& rejectedTotal;
  prometheus::Family<prometheus::Counter>& lostTotal;
  prometheus::Family<prometheus::Counter>& roundsTotal;
  prometheus::Family<prometheus::Histogram>& roundSeconds;
  prometheus::Family<prometheus::Gauge>& nodesGauge;
  prometheus::Family<prometheus::Counter>& relayedTotal;
  prometheus::Family<prometheus::Gauge>& nodeGauges;

  HttpReply handle(const HttpRequest& request);
  HttpReply relayPartial(const std::string& job, const HttpRequest& request);
  /// A connection to an agent, and a node's command channel: bounded by
  /// command_timeout_seconds, carrying the cluster credential (security.auth).
  Result<std::unique_ptr<HttpClient>> connectToNode(const std::string& url) const;
  /// How the controller calls agents' https:// gateways: tls.ca_file, and its own certificate.
  TlsOptions nodeTls() const { return {config.tlsCaFile, config.tls.certFile, config.tls.keyFile}; }
  std::shared_ptr<NodeCommands> commandsFor(const std::string& name, const std::string& url) const;
  void sweep();

  // controller_nodes.cc
  Result<nlohmann::json> registerNode(const nlohmann::json& body);
  /// @return where the cluster's models are served (modelRoutes), for the agents' gateways
  Result<nlohmann::json> heartbeat(const std::string& name, const nlohmann::json& body);
  nlohmann::json listNodes() const;
  /// {model: [{node, url, in_flight}]} of the live nodes that serve a model (their heartbeats'
  /// "models"). Called with the mutex held.
  nlohmann::json modelRoutes() const;
  /// GET /v1/models: OpenAI's model list, each with the nodes that serve it.
  nlohmann::json listModels() const;
  void nodeLost(const std::string& name, const std::string& why);
  void syncNode(const std::string& name);
  std::vector<NodeLoad> liveNodes() const;
  void command(const std::string& node, std::string method, std::string target,
               const nlohmann::json& body);

  // controller_jobs.cc
  Result<nlohmann::json> createJob(JobSpec spec);
  Result<nlohmann::json> jobStatus(const std::string& id) const;
  nlohmann::json listJobs() const;
  Result<void> cancelJob(const std::string& id);
  Result<nlohmann::json> admit(const nlohmann::json& body);
  Result<void> roundCompleted(const nlohmann::json& body);
  Result<void> partialForwarded(const nlohmann::json& body);
  Result<void> setInitialModel(const std::string& id, const std::string& bytes);
  Result<ClusterJob*> find(const std::string& id) const;
  Result<void> startRound(ClusterJob& job);
  void closeRound(ClusterJob& job, bool byDeadline);
  void finishJob(ClusterJob& job, std::string state, std::string failure = "");
  void checkDeadline(ClusterJob& job, Clock::time_point now);
  void sendJob(ClusterJob& job, const std::string& node, bool reroot = false);
  void rerootRound(ClusterJob& job, const std::string& lost, const std::string& reason);
  void sendClose(ClusterJob& job, const std::string& node);
  std::string modelUrl(const ClusterJob& job) const;
  std::string modelTag(const ClusterJob& job) const;
  void recordLost(ClusterJob& job, const std::string& source, const Admitted& a,
                  const std::string& reason);

  // controller_store.cc: <data dir>/jobs/<id>/{job.json, admitted-<round>.log,
  // model-<round>.safetensors}
  void persist(const ClusterJob& job) const;
  void journal(const ClusterJob& job, uint32_t round, const std::string& source,
               const Admitted& a) const;
  void restore();
  std::string modelPath(const std::string& id, uint32_t round) const;
  void fetchModel(const std::string& id, uint32_t round, const std::string& url);
  void copyModels();  ///< the copier thread
};

nlohmann::json specJson(const JobSpec& spec);

}  // namespace lifl::control
