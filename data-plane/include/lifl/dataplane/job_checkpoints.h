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
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lifl/common/error.h"
#include "lifl/dataplane/object_store.h"

namespace lifl::dataplane {

/// A file mapped read-only (RAII): a finished job's saved model, served without the store.
class MappedFile {
 public:
  static Result<std::shared_ptr<const MappedFile>> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  MappedFile() = default;
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

class JobCheckpoints {
 public:
  /// @param dataDir the agent's data dir; empty disables checkpoints
  explicit JobCheckpoints(std::string dataDir);

  bool enabled() const { return !root_.empty(); }
  Result<void> saveState(const std::string& id, const nlohmann::json& state) const;
  Result<void> saveModel(const std::string& id, uint32_t round, const ObjectRef& model) const;
  /// Records one accepted update of `round`. 503 disk_full (or 500) when it cannot be
  /// written: an update is accepted only once a restart would know of it.
  Result<void> journal(const std::string& id, uint32_t round, const std::string& source,
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
  /// @param withModel whether a job in `state` (job.json's) gets its model bytes read
  std::vector<Saved> load(const std::function<bool(const nlohmann::json& state)>& withModel) const;
  /// The saved model of `round`, mapped read-only; 404 no_model if it was not saved.
  Result<std::shared_ptr<const MappedFile>> mapModel(const std::string& id, uint32_t round) const;
  /// Whether the model of `round` is saved, `bytes` long (its tensors; state may follow).
  bool hasModel(const std::string& id, uint32_t round, uint64_t bytes) const;

 private:
  std::string jobDir(const std::string& id) const;
  std::string modelPath(const std::string& id, uint32_t round) const;
  std::string root_;
};

}  // namespace lifl::dataplane
