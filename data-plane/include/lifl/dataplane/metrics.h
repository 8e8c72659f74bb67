// The agent's Prometheus metrics (names start with lifl_, base units, _total for counters;
// serverless.md conventions). Served by the gateway's /metrics in text format.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "lifl/common/descriptor.h"

namespace lifl::dataplane {

class Metrics {
 public:
  Metrics();

  void updateAccepted(const std::string& job, uint64_t bytes);
  void updateRejected(const std::string& code);
  void roundCompleted(const std::string& job, double seconds);
  void scaleUp(const std::string& job);
  void request(const std::string& route, int status);
  /// Brings the router counters of `instance` up to `delivered`/`bytes` (monotonic).
  void routerCounters(InstanceId instance, uint64_t deliveredMsgs, uint64_t deliveredBytes);
  void forgetInstance(InstanceId instance);
  /// Time to accept one update (body read, validated, routed).
  void ingestSeconds(double seconds);
  /// Time from a round's last update to its new model (what aggregation adds to a round).
  void aggregationSeconds(const std::string& job, double seconds);
  /// One LLM completion: time to first token, mean inter-token latency, tokens generated and
  /// the request's whole time.
  void llmCompletion(double ttftSeconds, double interTokenSeconds, uint64_t tokens, double seconds);
  /// An asynchronous job's update, taken `versions` global versions after its client's model.
  void updateStaleness(const std::string& job, uint32_t versions);

  struct NodeState {
    uint64_t storeCapacity = 0, storeFree = 0, storeLiveBytes = 0, storeLiveObjects = 0;
    uint64_t warm = 0, busy = 0, coldStarts = 0, deaths = 0;
    std::map<std::string, uint64_t> aggregatorsByRole;
    uint64_t crossNodeSent = 0, crossNodeReceived = 0;  ///< cluster mode: agent-to-agent bytes
  };
  /// Refreshes the gauges (and the monotonic counters) of the node's state before a scrape.
  void nodeState(const NodeState& state);

  std::string serialize() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& accepted_;
  prometheus::Family<prometheus::Counter>& ingestBytes_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Family<prometheus::Counter>& rounds_;
  prometheus::Family<prometheus::Histogram>& roundSeconds_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& routed_;
  prometheus::Family<prometheus::Counter>& routedBytes_;
  prometheus::Family<prometheus::Histogram>& ingest_;
  prometheus::Family<prometheus::Histogram>& aggregation_;
  prometheus::Family<prometheus::Histogram>& ttft_;
  prometheus::Family<prometheus::Histogram>& interToken_;
  prometheus::Family<prometheus::Counter>& generated_;
  prometheus::Family<prometheus::Counter>& generationSeconds_;
  prometheus::Family<prometheus::Histogram>& staleness_;
  prometheus::Family<prometheus::Gauge>& storeBytes_;
  prometheus::Family<prometheus::Gauge>& storeObjects_;
  prometheus::Family<prometheus::Gauge>& instances_;
  prometheus::Family<prometheus::Gauge>& aggregators_;
  prometheus::Family<prometheus::Counter>& coldStarts_;
  prometheus::Family<prometheus::Counter>& deaths_;
  prometheus::Family<prometheus::Counter>& crossNode_;
  prometheus::Family<prometheus::Counter>& scaleUps_;
  std::mutex mutex_;
  std::map<InstanceId, std::pair<uint64_t, uint64_t>> lastRouter_;
  uint64_t lastColdStarts_ = 0, lastDeaths_ = 0, lastSent_ = 0, lastReceived_ = 0;
};

}  // namespace lifl::dataplane
