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
  void request(const std::string& route, int status);
  /// Brings the router counters of `instance` up to `delivered`/`bytes` (monotonic).
  void routerCounters(InstanceId instance, uint64_t deliveredMsgs, uint64_t deliveredBytes);
  void forgetInstance(InstanceId instance);
  void setGauge(const std::string& name, double value);

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
  prometheus::Family<prometheus::Gauge>& gauges_;
  std::mutex mutex_;
  std::map<InstanceId, std::pair<uint64_t, uint64_t>> lastRouter_;
};

}  // namespace lifl::dataplane
