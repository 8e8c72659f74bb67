// The CloudEvents binary-mode headers of a pushed update (API.md "Pushing an update"), read
// from the request's headers alone, before its body. Its own small library, so that the
// fuzz target (tests/fuzz/fuzz_update_headers.cc) drives the same code as the gateway.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "lifl/common/error.h"

namespace lifl::dataplane {

/// The CloudEvents attributes of one pushed update.
struct UpdateMeta {
  std::string id;
  std::string source;
  uint32_t round = 0;
  uint64_t numExamples = 0;
  // Set by admit(): the update's round closed at its deadline (late), and it waits for the
  // next round to start (parked) under the job's `late: next_round` policy.
  bool late = false;
  bool parked = false;
  /// Set by admit(): the round the update was admitted into, and (fedbuff) how many global
  /// versions that round is past the one the client trained from.
  uint32_t target = 0;
  uint32_t staleness = 0;
};

/// A header's value by its (case-insensitive) name; empty when absent.
using HeaderLookup = std::function<std::string_view(std::string_view name)>;

/// The update's attributes, or 400 `bad_header` naming the header at fault.
Result<UpdateMeta> parseUpdateHeaders(const HeaderLookup& header);

}  // namespace lifl::dataplane
