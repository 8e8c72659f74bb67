// Durable job state in the data dir, so a restarted platform resumes every job at the round
// it was in: per job, the state (spec, round, history) rewritten atomically after each
// change, the global model of each completed round, and a journal of the updates accepted
// in the current round (appended per update), from which a restart reports what it lost.
//
//   <data dir>/jobs/<id>/job.json
//   <data dir>/jobs/<id>/model-<round>.safetensors
//   <data dir>/jobs/<id>/accepted-<round>.log
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lifl/common/error.h"
#include "lifl/dataplane/object_store.h"

namespace lifl::dataplane {

class JobCheckpoints {
 public:
  /// @param dataDir the agent's data dir; empty disables checkpoints
  explicit JobCheckpoints(std::string dataDir);

  bool enabled() const { return !root_.empty(); }
  Result<void> saveState(const std::string& id, const nlohmann::json& state) const;
  Result<void> saveModel(const std::string& id, uint32_t round, const ObjectRef& model) const;
  /// Records one accepted update of `round` (best effort: a failed write is logged).
  void journal(const std::string& id, uint32_t round, const std::string& source,
               const std::string& ceId) const;
  /// Replaces the journal of `round` with `accepted` (after a restart dropped the lost ones).
  void rewriteJournal(const std::string& id, uint32_t round,
                      const std::vector<std::pair<std::string, std::string>>& accepted) const;

  struct Saved {
    nlohmann::json state;
    std::optional<std::string> model;  ///< bytes of the model of the saved round, if any
    uint64_t acceptedInRound = 0;      ///< journal entries of the saved round
    std::vector<std::pair<std::string, std::string>> accepted;  ///< (ce-source, ce-id) of them
  };
  /// Every job saved under the data dir (unreadable ones are skipped with a log line).
  std::vector<Saved> load() const;

 private:
  std::string jobDir(const std::string& id) const;
  std::string root_;
};

}  // namespace lifl::dataplane
