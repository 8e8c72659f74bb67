// Jobs and rounds on one node: admission of client updates (everything API.md rejects is
// rejected here, before or after the body is read), routing of accepted updates to leaf
// aggregators, the round's aggregation tree of function instances, publication of each
// round's global model, and recovery when an aggregator dies (invariant 4: every accepted
// update is counted exactly once).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "lifl/common/job_spec.h"
#include "lifl/common/plan.h"
#include "lifl/dataplane/endpoint.h"
#include "lifl/dataplane/job_checkpoints.h"
#include "lifl/dataplane/metrics.h"
#include "lifl/dataplane/object_store.h"
#include "lifl/dataplane/safetensors.h"
#include "lifl/dataplane/supervisor.h"
#include "lifl/dataplane/update_headers.h"

namespace lifl::dataplane {

class ClusterLink;

/// Chooses the tree of a round (injected: the control plane's planner).
using Planner = std::function<Plan(const PlanRequest& request)>;

/// Descriptors delivered to an instance and not yet handled by it (eBPF delivered counter
/// minus the runtime's processed counter).
using QueueDepthProbe = std::function<uint64_t(InstanceId)>;

struct Admission {
  bool duplicate = false;  ///< a retry of an accepted update: answer 202, count nothing
  uint32_t round = 0;
  uint64_t bodyLimit = 0;
};

/// The current global model of a job, held while it is served: in the store, or, for a
/// finished job, its saved checkpoint mapped read-only (the store copy is given back when the
/// job ends, so that finished jobs do not fill the store).
struct ModelLease {
  ObjectRef object;
  uint32_t round = 0;
  std::shared_ptr<const MappedFile> file;
  uint64_t fileBytes = 0;  ///< of `file`: the tensors, without a server optimiser's state
  const std::byte* data() const { return file ? file->data() : object.data(); }
  uint64_t size() const { return file ? fileBytes : object.size(); }
};

class JobManager {
 public:
  /// @param idleSeconds a job whose round has had no update for this long releases its
  ///        aggregators (scale to zero); the next update brings them back from the pool
  JobManager(ObjectStore& store, Endpoint& endpoint, Supervisor& supervisor, Metrics& metrics,
             Planner planner, double idleSeconds = 60,
             JobCheckpoints checkpoints = JobCheckpoints(""));

  /// Brings back the jobs saved in the data dir, each at the round it was in (with the model
  /// of that round). Updates accepted in the interrupted round are counted as lost in the
  /// job's status; their clients may push them again.
  void restore();
  ~JobManager();

  Result<nlohmann::json> create(JobSpec spec);
  nlohmann::json list() const;
  Result<nlohmann::json> status(const std::string& id) const;
  Result<void> cancel(const std::string& id);

  /// Checks that the initial model may still be set; returns the body bound.
  Result<uint64_t> admitModel(const std::string& id) const;
  /// Validates `uploaded` (a temporary object the caller frees) and makes it the round-0 model.
  Result<void> setModel(const std::string& id, const ObjectRef& uploaded);
  /// A reference to the current global model; give it back with returnModel().
  Result<ModelLease> leaseModel(const std::string& id);
  void returnModel(const ModelLease& lease);

  /// Header-time admission of an update: 404/409 here, before any body byte is read.
  /// Fills meta.late / meta.parked for commit() and abandon().
  Result<Admission> admit(const std::string& id, UpdateMeta& meta);
  /// Frees the reservation of an admitted update whose body failed.
  void abandon(const std::string& id, const UpdateMeta& meta);

  /// Backpressure on update bodies: an eager job's updates that no sealed partial covers yet
  /// (being received, or routed and waiting in a leaf) are bounded, so that the store's use
  /// does not grow with the number of clients; and for every job the store keeps room for
  /// the partials and models its rounds will allocate, so that what was accepted can always
  /// be aggregated. Yes, and counted as receiving, when one more body may be read now (give
  /// it back with doneReceiving()); else what is short.
  enum class Room { Yes, BufferFull, StoreFull };
  Room tryStartReceiving(const std::string& id);
  void doneReceiving(const std::string& id);
  /// `functions.max_buffered_updates` (0: no bound); a job's bound is never below its leaves'
  /// fan-in + 2, so that a slot can always fill.
  void setUpdateBuffer(uint32_t maxUpdates) { maxBufferedUpdates_ = maxUpdates; }
  /// `functions.device`: where the leaves of jobs that name no device fold ("cpu", "cuda").
  void setDefaultDevice(std::string device) { defaultDevice_ = std::move(device); }
  /// Validates the body (400/422) and, if good, routes it to its leaf: the update is accepted.
  Result<uint32_t> commit(const std::string& id, const UpdateMeta& meta, ObjectRef update);

  // Cluster mode (job_cluster.cc): the controller runs the job's rounds; this node runs the
  // subtree of the updates its gateway accepted, and the top when it is the round's root.
  void setCluster(ClusterLink* link) { cluster_ = link; }
  /// Scale-up within a round (job_scaling.cc): a leaf `queueDepth` descriptors behind gets
  /// the rest of its slot moved to a new leaf. 0 disables it.
  void setAutoscale(QueueDepthProbe probe, uint32_t queueDepth);
  /// Co-located roles (default on): each middle, and a top over leaves, runs in the process
  /// of its first leaf slot instead of one of its own.
  void setColocation(bool on) { colocate_ = on; }
  bool clustered() const { return cluster_ != nullptr; }
  /// Brings the node's part of a job to the state the controller sent (idempotent).
  Result<void> clusterSync(const std::string& id, const nlohmann::json& command);
  /// The controller closed the round: `count` updates of it were admitted here.
  Result<void> clusterClose(const std::string& id, const nlohmann::json& command);
  /// Root node: checks a partial from another node may come; returns its byte bound, or
  /// nullopt for a partial already delivered (a retry).
  Result<std::optional<uint64_t>> admitRemotePartial(const std::string& id, uint32_t round,
                                                     uint32_t epoch, const std::string& key);
  /// Root node: hands a received partial (a temporary object the caller frees on error) to
  /// the top.
  Result<void> deliverRemotePartial(const std::string& id, uint32_t round, uint32_t epoch,
                                    const std::string& key, ObjectRef partial);
  /// The partial of this node's subtree (to the agent): forwarded to the root node.
  void onPartial(const Descriptor& d);

  /// Aggregator instances of active jobs by role ("leaf", "middle", "top"), for metrics.
  std::map<std::string, uint64_t> aggregatorsByRole() const;

  // Messages to the agent's endpoint and supervisor events.
  void onModel(const Descriptor& d);
  void onAck(const Descriptor& d);
  /// A leaf finished its slot: its process goes back to the warm pool for later slots.
  void onLeafDone(const Descriptor& d);
  void onInstanceDeath(InstanceId id);

 private:
  enum class State { Active, Done, Cancelled, Failed };
  struct RoundRecord {
    uint32_t round;
    uint32_t clients;
    double weight;
    double seconds;
    bool byDeadline;
    double meanStaleness;  ///< fedbuff: of the round's updates
    uint32_t maxStaleness;
  };
  /// This node's part of a clustered job's current round, as the controller assigned it.
  struct ClusterRound {
    // Declared, so that clang sees it constructible inside the enclosing class (its default
    // member initialisers are parsed only once JobManager is complete).
    ClusterRound() {}
    uint32_t epoch = 0;
    std::string root, rootUrl;
    bool isRoot = false;
    uint32_t share = 0;  ///< updates the plan expects at this node
    bool closeRequested = false;
    uint32_t closeAt = 0;  ///< updates of the round admitted here
    uint32_t total = 0;    ///< updates of the whole round (the top's count)
    bool closed = false;
    bool reported = false;  ///< root: the model was reported to the controller
    std::string modelTag;   ///< which model this node holds ("<round>:init|put|agg")
    std::unordered_set<std::string> partialsIn;  ///< root: remote partials delivered
    std::unordered_set<std::string> inFlight;    ///< ce-sources whose body is arriving
    uint32_t partialsOut = 0;                    ///< partials sent to the root this round
    uint32_t startedRound = UINT32_MAX;          ///< the round this node's tree was deployed for
    InstanceId top = 0;  ///< re-rooted here mid-round: the round's top, beside the subtree
    std::vector<Descriptor> kept;  ///< partials delivered to the root, kept until the model
  };
  struct Parked {  ///< a late update waiting for the next round
    ObjectHandle object;
    UpdateMeta meta;
  };
  struct Job {
    uint32_t slot = 0;
    JobSpec spec;
    State state = State::Active;
    uint32_t round = 0;
    uint32_t received = 0;
    uint32_t reserved = 0;
    std::unordered_map<std::string, std::string> sources;  ///< roundSlotKey -> ce-id this round
    std::unordered_set<std::string> accepted;              ///< source + '\n' + id this round
    std::unordered_set<std::string> acceptedBefore;        ///< the previous round's (retries)
    std::optional<ObjectHandle> model;
    Plan plan;
    std::vector<InstanceId> instances;  ///< per plan node
    /// Per leaf: the client keys of the updates routed to it this round (recovery counts a
    /// subtree's clients by key).
    std::vector<std::vector<uint64_t>> routed;
    uint32_t routedTotal = 0;   ///< updates routed to leaves this round
    uint64_t stalenessSum = 0;  ///< fedbuff: of the updates routed this round
    uint32_t stalenessMax = 0;
    std::chrono::steady_clock::time_point roundOpened;  ///< the deadline counts from here
    std::chrono::steady_clock::time_point roundStart;   ///< first update admitted
    std::chrono::steady_clock::time_point lastArrival;
    bool closing = false;       ///< closed at the deadline; its model is being aggregated
    bool modelSaved = false;    ///< finished: its model is in its checkpoint only (offloadModel)
    bool scaledToZero = false;  ///< idle: its aggregators went back to the pool
    // Late updates folded into the next round (late: next_round), waiting while closing.
    std::vector<Parked> parked;
    std::unordered_map<std::string, std::string> parkedSources;
    std::unordered_set<std::string> parkedAccepted;
    uint32_t parkedReserved = 0;
    uint64_t lateDropped = 0;
    uint64_t lateFolded = 0;
    double arrivalRate = 0;     ///< updates/s of the last completed round
    double leafThroughput = 0;  ///< updates/s one leaf folds, measured last round
    bool roundStarted = false;
    std::vector<RoundRecord> history;
    uint64_t recoveries = 0;
    uint64_t scaleUps = 0;       ///< leaves added within rounds
    size_t cursor = 0;           ///< the routing slot being filled
    uint32_t receiving = 0;      ///< update bodies being read past the backpressure bound
    uint64_t lostOnRestart = 0;  ///< accepted updates of a round interrupted by a restart
    std::string failure;
    std::optional<ClusterRound> cluster;
  };

  Result<Job*> find(const std::string& id) const;
  /// Updates admitted now wait for the next round: the round closed at its deadline, or
  /// (fedbuff, no round barrier) its buffer is full while its model is being made.
  static bool admitsIntoNextRound(const Job& job);
  /// The job and the body parsed and checked against its model (400/404/422).
  /// @param update an update (blockwise int8 accepted), else a model
  Result<std::pair<Job*, SafetensorsView>> validated(const std::string& id, const ObjectRef& body,
                                                     bool update) const;
  Result<void> createInitialModel(Job& job);
  /// @param coveredByPartials clients of the round already summed in partials recovered from
  ///        an adopted store: they go to the top, the leaves plan for the others
  Result<void> startRound(Job& job, uint32_t coveredByPartials = 0);
  /// Re-creates the interrupted round of a restored job from what survived in the store.
  void recoverRound(Job& job, const std::vector<std::pair<std::string, std::string>>& accepted);
  /// Takes instances for the round's plan and assigns them their roles.
  Result<void> deployTree(Job& job);
  /// Gives the tree's instances back to the pool.
  void releaseTree(Job& job);
  static std::vector<InstanceId> distinctInstances(const Job& job);
  /// Leaf slots given a process when a round starts; the others get one as updates reach
  /// them (deployLeaf), one slot ahead.
  static constexpr size_t kLeavesDeployedAhead = 2;
  /// Partials of a round allowed beside its buffered updates: the open leaf's accumulator,
  /// its parent's and the top's sealed ones, and one being folded.
  static constexpr uint32_t kWorkingPartials = 4;
  /// Store bytes of a round's largest partial or update, and of its model object, each with
  /// its size class's slack.
  struct RoundBlocks {
    uint64_t partial, model;
  };
  static RoundBlocks roundBlocks(const JobSpec& spec);
  /// Store bytes a job's aggregators may still allocate in its open round before they free
  /// anything (tryStartReceiving).
  uint64_t aggregationReserve(const Job& job) const;
  /// 422 store_too_small when no round of the job could complete in this node's store.
  Result<void> fitsInStore(const JobSpec& spec) const;
  /// True for a leaf slot that runs in its parent's process (co-located roles).
  static bool rides(const Job& job, size_t node);
  nlohmann::json aggregatorParams(const Job& job, size_t node, uint32_t expected) const;
  /// The instance a plan node sends its partials to (the agent, for a node's subtree root
  /// in cluster mode: it forwards them to the root node).
  InstanceId parentOf(const Job& job, size_t node) const;
  // job_cluster.cc
  Result<Admission> admitClustered(Job& job, UpdateMeta& meta);
  Result<uint32_t> commitClustered(const std::string& id, Job* job, const UpdateMeta& meta,
                                   ObjectRef update);
  Result<void> startClusterRound(Job& job, const nlohmann::json& command);
  Result<void> installModel(Job& job, const std::string& bytes);
  /// Inserts a leaf at plan index `at` (beside leaf at-1, under its parent) covering
  /// `expected` updates: scale-up within a round.
  Result<void> growLeaf(Job& job, size_t at, uint32_t expected);
  /// Gives a leaf slot a process when updates are about to reach it (job_scaling.cc).
  Result<void> deployLeaf(Job& job, size_t leaf);
  uint32_t accumulatorsToOpen(const Job& job, uint32_t incoming) const;
  /// The leaf slot the next update goes to, adding a leaf when the current one is behind.
  size_t slotFor(Job& job, bool recovered);
  void maybeCloseCluster(Job& job);
  void reportModel(Job& job, const Descriptor& d);
  void forwardPartial(Job& job, const Descriptor& partial);
  Result<void> reroot(Job& job, const nlohmann::json& command);
  void releaseClusterRound(Job& job);
  /// The instance that aggregates the whole round on the root node.
  InstanceId topOf(const Job& job) const;
  /// Flushes leaves and tells middles and the top how many clients their subtree covers;
  /// `topCount`, when given, is the top's (a cluster root's top also covers other nodes).
  void closeTree(Job& job, std::optional<uint32_t> topCount = std::nullopt);
  void finish(Job& job, State state);
  /// A finished job's model leaves the store once its checkpoint holds it; GET .../model then
  /// maps the file. Without this, finished jobs' models would fill the store for good.
  void offloadModel(Job& job);
  void sendFlush(const Job& job, size_t leaf);
  /// Routes an accepted update to its leaf (the update is then the leaf's responsibility).
  /// `recovered`: an update accepted before a restart (already journaled and counted).
  void route(Job& job, ObjectRef update, const UpdateMeta& meta, bool recovered = false);
  /// Deadline thread: closes (or fails) rounds whose deadline has passed.
  void watchDeadlines();
  void closeAtDeadline(Job& job);
  void failRound(Job& job, std::string reason);
  void recover(Job& job, size_t node, InstanceId dead);
  /// Sorts out what a dead aggregator owned; returns the inputs for its replacement.
  /// @param parent where its sealed partials go again; none for a top
  std::vector<ObjectRef> reclaim(Job& job, InstanceId dead, std::optional<InstanceId> parent);
  void redeliver(const Job& job, InstanceId to, const std::vector<ObjectRef>& inputs);
  void recoverClusterTop(Job& job, InstanceId dead);
  Result<void> startClusterTop(Job& job);
  /// Clients of `node`'s subtree already summed in partials that survive `dead` (by key).
  uint32_t coveredClients(const Job& job, size_t node, InstanceId dead) const;
  void reclaimUnowned(InstanceId dead);
  nlohmann::json statusOf(const Job& job) const;
  /// Saves the job's state (and, when given, the model of its current round) to disk.
  void persist(const Job& job, bool withModel = false) const;
  nlohmann::json savedState(const Job& job) const;
  bool send(Descriptor d);
  /// A descriptor of `job`'s current round to `dst`, naming `object` when given.
  static Descriptor roundDescriptor(const Job& job, InstanceId dst, DescriptorKind kind,
                                    const ObjectRef* object = nullptr);

  ObjectStore& store_;
  Endpoint& endpoint_;
  Supervisor& supervisor_;
  Metrics& metrics_;
  Planner planner_;
  double idleSeconds_;
  JobCheckpoints checkpoints_;
  mutable std::mutex mutex_;
  std::map<std::string, std::unique_ptr<Job>> jobs_;
  std::map<uint32_t, Job*> bySlot_;
  /// Partials the agent re-sent for a dead aggregator -> the inputs to release on their ack.
  std::unordered_map<uint64_t, std::vector<ObjectHandle>> resentInputs_;
  uint32_t nextSlot_ = 1;
  ClusterLink* cluster_ = nullptr;
  QueueDepthProbe queueDepth_;
  uint32_t scaleUpDepth_ = 0;
  bool colocate_ = true;
  uint32_t maxBufferedUpdates_ = 0;
  std::string defaultDevice_ = "cpu";
  std::condition_variable stopDeadlines_;
  bool stopping_ = false;
  std::thread deadlines_;
};

}  // namespace lifl::dataplane
