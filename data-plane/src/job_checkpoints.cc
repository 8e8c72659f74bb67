#include "lifl/dataplane/job_checkpoints.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lifl/common/log.h"
#include "lifl/common/unique_fd.h"

namespace lifl::dataplane {
namespace fs = std::filesystem;

namespace {

/// Writes `bytes` to `path` atomically: a temporary file, fsync'd, renamed over it.
Result<void> writeAtomically(const std::string& path, const void* bytes, size_t size) {
  const std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return systemError("create " + tmp, errno);
  const char* p = static_cast<const char*>(bytes);
  while (size > 0) {
    ssize_t n = ::write(fd.get(), p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return systemError("write " + tmp, errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return systemError("fsync " + tmp, errno);
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) return systemError("rename " + tmp, errno);
  return success();
}

std::optional<std::string> readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A job's files, in its directory: a round's model, and the round's journal of accepted
/// updates.
std::string modelFile(const std::string& dir, uint32_t round) {
  return dir + "/model-" + std::to_string(round) + ".safetensors";
}
std::string journalFile(const std::string& dir, uint32_t round) {
  return dir + "/accepted-" + std::to_string(round) + ".log";
}

}  // namespace

JobCheckpoints::JobCheckpoints(std::string dataDir)
    : root_(dataDir.empty() ? "" : dataDir + "/jobs") {}

std::string JobCheckpoints::jobDir(const std::string& id) const { return root_ + "/" + id; }

Result<void> JobCheckpoints::saveState(const std::string& id, const nlohmann::json& state) const {
  if (!enabled()) return success();
  std::error_code ec;
  fs::create_directories(jobDir(id), ec);
  if (ec) return internal("checkpoint_failed", "cannot create " + jobDir(id) + ": " + ec.message());
  const std::string text = state.dump();
  return writeAtomically(jobDir(id) + "/job.json", text.data(), text.size());
}

Result<void> JobCheckpoints::saveModel(const std::string& id, uint32_t round,
                                       const ObjectRef& model) const {
  if (!enabled()) return success();
  std::error_code ec;
  fs::create_directories(jobDir(id), ec);
  // A server optimiser's state follows the tensors in the object (its value counts the
  // vectors, each the tensors' size): saved with them, so a restart keeps it.
  uint64_t bytes = model.size();
  uint64_t headerLength = 0;
  if (model.value() > 0 && model.size() >= 8) {
    std::memcpy(&headerLength, model.data(), 8);
    const uint64_t tensors = model.size() - std::min(model.size(), 8 + headerLength);
    if (model.size() + model.value() * tensors <= model.capacity())
      bytes = model.size() + model.value() * tensors;
  }
  return writeAtomically(modelPath(id, round), model.data(), bytes);
}

Result<void> JobCheckpoints::journal(const std::string& id, uint32_t round,
                                     const std::string& source, const std::string& ceId) const {
  if (!enabled()) return success();
  const std::string path = journalFile(jobDir(id), round);
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  const std::string line = source + '\t' + ceId + '\n';  // ids are single-line header values
  struct stat before {};
  const bool sized = fd && ::fstat(fd.get(), &before) == 0;
  if (sized && ::write(fd.get(), line.data(), line.size()) == static_cast<ssize_t>(line.size()))
    return success();
  const int err = errno;
  // A partial line (the disk filled mid-write) would be read back as a client: cut it off.
  if (sized && ::ftruncate(fd.get(), before.st_size) != 0)
    LIFL_WARN("cannot cut a partial line off " << path);
  if (err == ENOSPC || err == EDQUOT)
    return unavailable("disk_full", "the data dir has no room to record the update; retry later");
  return internal("journal_failed",
                  "cannot record the update in " + path + ": " + std::strerror(err));
}

void JobCheckpoints::rewriteJournal(
    const std::string& id, uint32_t round,
    const std::vector<std::pair<std::string, std::string>>& accepted) const {
  if (!enabled()) return;
  std::string text;
  for (const auto& [source, ceId] : accepted) text += source + '\t' + ceId + '\n';
  const std::string path = journalFile(jobDir(id), round);
  if (auto written = writeAtomically(path, text.data(), text.size()); !written)
    LIFL_WARN("cannot rewrite " << path << ": " << written.error().detail);
}

Result<std::shared_ptr<const MappedFile>> MappedFile::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return notFound("no_model", "cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || st.st_size <= 0)
    return internal("checkpoint_unreadable", "cannot read " + path);
  void* at = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd.get(), 0);
  if (at == MAP_FAILED)
    return internal("checkpoint_unreadable", "cannot map " + path + ": " + std::strerror(errno));
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->data_ = static_cast<std::byte*>(at);
  file->size_ = static_cast<uint64_t>(st.st_size);
  return std::shared_ptr<const MappedFile>(std::move(file));
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

std::string JobCheckpoints::modelPath(const std::string& id, uint32_t round) const {
  return modelFile(jobDir(id), round);
}

Result<std::shared_ptr<const MappedFile>> JobCheckpoints::mapModel(const std::string& id,
                                                                   uint32_t round) const {
  if (!enabled()) return notFound("no_model", "job " + id + " keeps no saved models");
  return MappedFile::open(modelPath(id, round));
}

bool JobCheckpoints::hasModel(const std::string& id, uint32_t round, uint64_t bytes) const {
  std::error_code ec;
  return enabled() && fs::file_size(modelPath(id, round), ec) >= bytes && !ec;
}

std::vector<JobCheckpoints::Saved> JobCheckpoints::load(
    const std::function<bool(const nlohmann::json&)>& withModel) const {
  std::vector<Saved> out;
  std::error_code ec;
  if (!enabled() || !fs::is_directory(root_, ec)) return out;
  for (const auto& entry : fs::directory_iterator(root_, ec)) {
    const std::string dir = entry.path().string();
    auto text = readAll(dir + "/job.json");
    if (!text) continue;
    Saved saved;
    saved.state = nlohmann::json::parse(*text, nullptr, false);
    if (saved.state.is_discarded() || !saved.state.is_object()) {
      LIFL_WARN("skipping unreadable job checkpoint " << dir);
      continue;
    }
    const auto round = saved.state.value("round", 0u);
    if (withModel(saved.state)) saved.model = readAll(modelFile(dir, round));
    if (auto journal = readAll(journalFile(dir, round))) {
      std::istringstream lines(*journal);
      std::string line;
      while (std::getline(lines, line)) {
        const auto tab = line.find('\t');
        if (tab != std::string::npos)
          saved.accepted.emplace_back(line.substr(0, tab), line.substr(tab + 1));
      }
      saved.acceptedInRound = saved.accepted.size();
    }
    out.push_back(std::move(saved));
  }
  return out;
}

}  // namespace lifl::dataplane
