#include "lifl/dataplane/metrics.h"

#include <prometheus/text_serializer.h>

namespace lifl::dataplane {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      accepted_(BuildCounter()
                    .Name("lifl_updates_accepted_total")
                    .Help("Client updates accepted (HTTP 202)")
                    .Register(*registry_)),
      ingestBytes_(BuildCounter()
                       .Name("lifl_ingest_bytes_total")
                       .Help("Update bytes written into the object store")
                       .Register(*registry_)),
      rejected_(BuildCounter()
                    .Name("lifl_updates_rejected_total")
                    .Help("Client updates rejected, by error code")
                    .Register(*registry_)),
      rounds_(BuildCounter()
                  .Name("lifl_rounds_completed_total")
                  .Help("Aggregation rounds completed")
                  .Register(*registry_)),
      roundSeconds_(BuildHistogram()
                        .Name("lifl_round_duration_seconds")
                        .Help("Time from a round's first accepted update to its new model")
                        .Register(*registry_)),
      requests_(BuildCounter()
                    .Name("lifl_http_requests_total")
                    .Help("HTTP requests by route and status")
                    .Register(*registry_)),
      routed_(BuildCounter()
                  .Name("lifl_router_delivered_messages_total")
                  .Help("Descriptors delivered into each instance (eBPF counters)")
                  .Register(*registry_)),
      routedBytes_(BuildCounter()
                       .Name("lifl_router_delivered_bytes_total")
                       .Help("Descriptor bytes delivered into each instance")
                       .Register(*registry_)),
      gauges_(BuildGauge()
                  .Name("lifl_agent_state")
                  .Help("Agent gauges: store bytes, instances, cold starts (label: what)")
                  .Register(*registry_)) {}

void Metrics::updateAccepted(const std::string& job, uint64_t bytes) {
  accepted_.Add({{"job", job}}).Increment();
  ingestBytes_.Add({{"job", job}}).Increment(static_cast<double>(bytes));
}

void Metrics::updateRejected(const std::string& code) {
  rejected_.Add({{"code", code}}).Increment();
}

void Metrics::roundCompleted(const std::string& job, double seconds) {
  rounds_.Add({{"job", job}}).Increment();
  roundSeconds_
      .Add({{"job", job}}, prometheus::Histogram::BucketBoundaries{0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                                                   2.5, 5, 10, 30, 60, 300})
      .Observe(seconds);
}

void Metrics::request(const std::string& route, int status) {
  requests_.Add({{"route", route}, {"status", std::to_string(status)}}).Increment();
}

void Metrics::routerCounters(InstanceId instance, uint64_t msgs, uint64_t bytes) {
  std::lock_guard lock(mutex_);
  auto& last = lastRouter_[instance];
  const std::string id = std::to_string(instance);
  if (msgs > last.first)
    routed_.Add({{"instance", id}}).Increment(static_cast<double>(msgs - last.first));
  if (bytes > last.second)
    routedBytes_.Add({{"instance", id}}).Increment(static_cast<double>(bytes - last.second));
  last = {msgs, bytes};
}

void Metrics::forgetInstance(InstanceId instance) {
  std::lock_guard lock(mutex_);
  lastRouter_.erase(instance);
}

void Metrics::setGauge(const std::string& name, double value) {
  gauges_.Add({{"what", name}}).Set(value);
}

std::string Metrics::serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace lifl::dataplane
