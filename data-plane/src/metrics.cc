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
      ingest_(BuildHistogram()
                  .Name("lifl_ingest_seconds")
                  .Help("Time to accept one update: body read into the store, validated, routed")
                  .Register(*registry_)),
      aggregation_(BuildHistogram()
                       .Name("lifl_aggregation_seconds")
                       .Help("Time from a round's last update to its new global model")
                       .Register(*registry_)),
      ttft_(BuildHistogram()
                .Name("lifl_llm_time_to_first_token_seconds")
                .Help("LLM completions: time from the request to its first token")
                .Register(*registry_)),
      interToken_(BuildHistogram()
                      .Name("lifl_llm_inter_token_latency_seconds")
                      .Help("LLM completions: mean time between generated tokens")
                      .Register(*registry_)),
      generated_(BuildCounter()
                     .Name("lifl_llm_generated_tokens_total")
                     .Help("LLM tokens generated (rate() gives tokens/s)")
                     .Register(*registry_)),
      generationSeconds_(BuildCounter()
                             .Name("lifl_llm_request_seconds_total")
                             .Help("LLM completions: total request time (tokens/s per request: "
                                   "generated tokens over this)")
                             .Register(*registry_)),
      staleness_(BuildHistogram()
                     .Name("lifl_update_staleness")
                     .Help("Global model versions between an asynchronous (fedbuff) update's "
                           "client model and the version it is applied to")
                     .Register(*registry_)),
      storeBytes_(BuildGauge()
                      .Name("lifl_store_bytes")
                      .Help("Object store bytes by state: capacity, free, live")
                      .Register(*registry_)),
      storeObjects_(BuildGauge()
                        .Name("lifl_store_objects")
                        .Help("Live objects in the object store")
                        .Register(*registry_)),
      instances_(BuildGauge()
                     .Name("lifl_instances")
                     .Help("Function instances by state: warm (idle, pre-started) or busy")
                     .Register(*registry_)),
      aggregators_(BuildGauge()
                       .Name("lifl_aggregators")
                       .Help("Aggregator instances of active jobs by role")
                       .Register(*registry_)),
      coldStarts_(BuildCounter()
                      .Name("lifl_cold_starts_total")
                      .Help("Instances started because the warm pool was empty")
                      .Register(*registry_)),
      deaths_(BuildCounter()
                  .Name("lifl_instance_deaths_total")
                  .Help("Function instances that exited outside a shutdown")
                  .Register(*registry_)),
      crossNode_(BuildCounter()
                     .Name("lifl_cross_node_bytes_total")
                     .Help("Bytes this agent sent to or received from other nodes' agents")
                     .Register(*registry_)),
      scaleUps_(BuildCounter()
                    .Name("lifl_scale_ups_total")
                    .Help("Leaves added within a round (a leaf behind its arrivals, or more "
                          "arrivals than planned)")
                    .Register(*registry_)) {}

void Metrics::scaleUp(const std::string& job) { scaleUps_.Add({{"job", job}}).Increment(); }

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

namespace {
const prometheus::Histogram::BucketBoundaries kSecondsBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
}  // namespace

void Metrics::ingestSeconds(double seconds) { ingest_.Add({}, kSecondsBuckets).Observe(seconds); }

void Metrics::aggregationSeconds(const std::string& job, double seconds) {
  aggregation_.Add({{"job", job}}, kSecondsBuckets).Observe(seconds);
}

void Metrics::llmCompletion(double ttftSeconds, double interTokenSeconds, uint64_t tokens,
                            double seconds) {
  static const prometheus::Histogram::BucketBoundaries kLatency = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  ttft_.Add({}, kLatency).Observe(ttftSeconds);
  if (tokens > 1) interToken_.Add({}, kLatency).Observe(interTokenSeconds);
  generated_.Add({}).Increment(static_cast<double>(tokens));
  generationSeconds_.Add({}).Increment(seconds);
}

void Metrics::updateStaleness(const std::string& job, uint32_t versions) {
  static const prometheus::Histogram::BucketBoundaries kVersions = {0, 1, 2, 3, 5, 10, 20, 50};
  staleness_.Add({{"job", job}}, kVersions).Observe(versions);
}

void Metrics::nodeState(const NodeState& st) {
  storeBytes_.Add({{"state", "capacity"}}).Set(static_cast<double>(st.storeCapacity));
  storeBytes_.Add({{"state", "free"}}).Set(static_cast<double>(st.storeFree));
  storeBytes_.Add({{"state", "live"}}).Set(static_cast<double>(st.storeLiveBytes));
  storeObjects_.Add({}).Set(static_cast<double>(st.storeLiveObjects));
  instances_.Add({{"state", "warm"}}).Set(static_cast<double>(st.warm));
  instances_.Add({{"state", "busy"}}).Set(static_cast<double>(st.busy));
  for (const char* role : {"leaf", "middle", "top"}) {
    auto it = st.aggregatorsByRole.find(role);
    aggregators_.Add({{"role", role}})
        .Set(it == st.aggregatorsByRole.end() ? 0.0 : static_cast<double>(it->second));
  }
  std::lock_guard lock(mutex_);
  // Added even at zero, so that the series exists before the first cold start or death.
  coldStarts_.Add({}).Increment(static_cast<double>(st.coldStarts - lastColdStarts_));
  deaths_.Add({}).Increment(static_cast<double>(st.deaths - lastDeaths_));
  lastColdStarts_ = st.coldStarts;
  lastDeaths_ = st.deaths;
  if (st.crossNodeSent > lastSent_)
    crossNode_.Add({{"direction", "sent"}})
        .Increment(static_cast<double>(st.crossNodeSent - lastSent_));
  if (st.crossNodeReceived > lastReceived_)
    crossNode_.Add({{"direction", "received"}})
        .Increment(static_cast<double>(st.crossNodeReceived - lastReceived_));
  lastSent_ = std::max(lastSent_, st.crossNodeSent);
  lastReceived_ = std::max(lastReceived_, st.crossNodeReceived);
}

std::string Metrics::serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace lifl::dataplane
