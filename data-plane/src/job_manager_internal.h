// Helpers shared by the files that implement JobManager (job_*.cc); not a public header.
#pragma once

#include <cstdint>
#include <string>

#include "lifl/dataplane/job_manager.h"

namespace lifl::dataplane::detail {

inline constexpr const char* kAggregator = "fl.aggregator";

inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
inline std::string acceptKey(const UpdateMeta& m) { return m.source + '\n' + m.id; }

/// What a round allows one of (`Job::sources`): a client (one update per client per round),
/// or, in an asynchronous job, an update (a fast client may land several in one buffer).
inline std::string roundSlotKey(const JobSpec& spec, const std::string& source,
                                const std::string& id) {
  return spec.strategy.asynchronous() ? source + '\n' + id : source;
}

/// 64-bit FNV-1a of an accept key: the client key carried by updates and partials.
inline uint64_t clientKeyOf(const std::string& acceptKey) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : acceptKey) h = (h ^ c) * 0x100000001b3ull;
  return h ? h : 1;  // 0 means unknown
}

}  // namespace lifl::dataplane::detail
