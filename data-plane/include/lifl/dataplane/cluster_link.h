// The agent's side of the cluster protocol (docs/architecture.md "Several nodes"):
// registration and heartbeats to the controller, admission of each update by the
// controller, reliable reports (a round's model, a forwarded partial), partials sent to the
// root node's agent with their bytes read straight from the store, and model copies from
// other nodes. Only agents started with `cluster.controller` have one.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "lifl/common/error.h"
#include "lifl/common/http_client.h"
#include "lifl/dataplane/object_store.h"

namespace lifl::dataplane {

struct ClusterConfig {
  std::string controller;    ///< http://host:port of `lifl controller`; empty: standalone
  std::string nodeName;      ///< default: the host name
  std::string advertiseUrl;  ///< how other nodes reach this gateway; default http://bind:port
  uint32_t slots = 0;        ///< aggregators this node hosts; 0: 4 per CPU of its cgroup
  double requestTimeoutSeconds = 10;
  /// For https:// URLs (the controller's, and other agents' gateways): the CA their
  /// certificates must chain to (empty: the system's), and this node's own certificate and
  /// key, presented where the other side asks for one (mTLS).
  TlsOptions tls;
  /// Set by the agent, not read from YAML: the cluster credential its calls carry where
  /// security.auth is on, and what to do with the controller's public key when it registers.
  std::string clusterToken;
  std::function<void(const std::string& publicKey)> onPublicKey;
};

/// The controller's answer to an update's admission.
struct ClusterAdmission {
  uint32_t round = 0;
  bool duplicate = false;
};

/// Where a partial must go now: the round's root node and epoch (the root may change
/// while the transfer is retried, when the controller re-roots the round).
struct PartialTarget {
  std::string rootUrl;
  uint32_t epoch = 0;
};

/// A partial bound for the root node, and what to do once it is there (or given up).
struct PartialTransfer {
  std::string job;
  uint32_t round = 0;
  ObjectHandle partial;
  /// Asked before each attempt; nullopt once the round moved on (the transfer is dropped).
  std::function<std::optional<PartialTarget>()> target;
  /// @param delivered the epoch it was delivered in, or nullopt
  std::function<void(std::optional<uint32_t> delivered)> done;
};

/// A node of the cluster that serves a model (POST /v1/completions), as the controller saw
/// it at this node's last heartbeat.
struct ModelRoute {
  std::string model, node, url;
  uint32_t inFlight = 0;      ///< completions it was serving at its last heartbeat
  std::string role = "both";  ///< the stages it runs: "both", "prefill" or "decode"
  /// Whether it answers a client's completion (it decodes); a prefill node prefills for
  /// the decode nodes (POST /v1/cluster/llm/prefill).
  bool decodes() const { return role != "prefill"; }
  bool prefills() const { return role != "decode"; }
};

class ClusterLink {
 public:
  ClusterLink(ClusterConfig config, ObjectStore& store);
  ~ClusterLink();
  ClusterLink(const ClusterLink&) = delete;
  ClusterLink& operator=(const ClusterLink&) = delete;

  /// Starts registration and heartbeats; `stats` fills each heartbeat.
  void start(std::function<nlohmann::json()> stats);
  const ClusterConfig& config() const { return config_; }

  Result<ClusterAdmission> admit(const std::string& job, uint32_t round, const std::string& source,
                                 const std::string& id, uint64_t numExamples);
  /// POSTs `body` to the controller's `path`, retried until it is taken or the link stops.
  void report(const std::string& path, nlohmann::json body);
  void forward(PartialTransfer transfer);
  /// GET `url`/v1/jobs/{job}/model: the bytes and the round they are the model of.
  Result<std::pair<std::string, uint32_t>> fetchModel(const std::string& url,
                                                      const std::string& job);
  /// Forwards a jobs-API request to the controller (the gateway's jobs API in cluster mode).
  /// @param authorization where given, sent instead of the cluster credential (a client's
  ///        request forwarded as it came)
  Result<HttpResponse> toController(std::string_view method, const std::string& target,
                                    const std::string& body, const std::string& contentType,
                                    std::optional<std::string_view> authorization = {});
  /// A client to `url` (another node, or the controller) carrying the cluster credential.
  Result<std::unique_ptr<HttpClient>> connect(const std::string& url) const;

  /// The other live nodes that serve `model` ("": any model), from the controller's answer
  /// to the last heartbeat.
  std::vector<ModelRoute> modelRoutes(const std::string& model) const;

  void countReceived(uint64_t bytes) { received_ += bytes; }
  uint64_t bytesSent() const { return sent_; }
  uint64_t partialsSent() const { return partialsSent_; }
  uint64_t bytesReceived() const { return received_; }

 private:
  /// A keep-alive connection to the controller from a small pool (one per caller at a time).
  std::unique_ptr<HttpClient> takeClient();
  void giveBack(std::unique_ptr<HttpClient> client);
  void runHeartbeats(std::function<nlohmann::json()> stats);
  void runReports();
  void runTransfers();
  /// @param relay through the controller, which passes it on to the root
  bool sendPartial(const PartialTransfer& t, const PartialTarget& to, bool relay);
  bool waitOrStop(double seconds);

  void takeModelRoutes(const nlohmann::json& heartbeatAnswer);

  ClusterConfig config_;
  ObjectStore& store_;
  mutable std::mutex mutex_;
  std::map<std::string, std::vector<ModelRoute>> modelRoutes_;  ///< by model name
  std::condition_variable wake_;
  bool stopping_ = false;
  std::vector<std::unique_ptr<HttpClient>> pool_;
  std::deque<std::pair<std::string, nlohmann::json>> reports_;
  std::deque<PartialTransfer> transfers_;
  std::atomic<uint64_t> sent_{0}, received_{0}, partialsSent_{0};
  std::thread heartbeats_, reporter_, transferrer_;
};

}  // namespace lifl::dataplane
