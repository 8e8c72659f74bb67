// The KV hand-off from llm.prefill to llm.decode on the GPU path (docs/llm.md), by CUDA IPC:
// the prefill instance allocates a few slots of device memory once and exports them by a
// 64-byte handle, with a small shared-memory table of the slots in use. It copies a
// sequence's K/V from its pages into a free slot and names the slot in the hand-off event;
// the decode instance copies the slot into its own pages, device to device, and frees it.
// Where no slot is free, the K/V travels in the event's store object, through the host.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "engine.h"
#include "lifl/gpu/llm_device.h"

namespace lifl::llm {

/// The table of slots in use: one 32-bit flag per slot in POSIX shared memory (RAII; the
/// creating side removes the name).
class SlotTable {
 public:
  static Result<std::unique_ptr<SlotTable>> create(const std::string& name, uint32_t slots);
  static Result<std::unique_ptr<SlotTable>> open(const std::string& name);
  ~SlotTable();
  /// Marks a free slot used and returns it; none when all are in use.
  std::optional<uint32_t> acquire();
  void release(uint32_t slot);
  uint32_t slots() const { return slots_; }

 private:
  struct Mapping;
  SlotTable(std::unique_ptr<Mapping> mapping, std::string name, uint32_t slots, bool owner);
  std::unique_ptr<Mapping> mapping_;
  std::string name_;
  uint32_t slots_;
  bool owner_;
};

class KvHandoffSender {
 public:
  /// Slots for `slots` prompts of up to `slotTokens` tokens each.
  static Result<std::unique_ptr<KvHandoffSender>> create(const Engine& engine, uint32_t slots,
                                                         uint32_t slotTokens);
  /// Copies the sequence's K/V into a free slot. The event attributes that name it, or none
  /// when every slot is in use (the caller hands the K/V over through the host instead).
  Result<std::optional<nlohmann::json>> send(const Engine& engine, const Sequence& seq);
  /// Gives back the slot of a hand-off that was never delivered.
  void cancel(const nlohmann::json& sent);

 private:
  KvHandoffSender(gpu::llm::IpcMemory memory, std::unique_ptr<SlotTable> table, std::string name,
                  uint64_t slotBytes);
  gpu::llm::IpcMemory memory_;
  std::unique_ptr<SlotTable> table_;
  std::string name_;
  uint64_t slotBytes_;
};

class KvHandoffReceiver {
 public:
  /// Copies the K/V that a hand-off's attributes name into the sequence, and frees the slot
  /// (also when the copy fails, so that the sender does not lose it).
  Result<void> receive(Engine& engine, Sequence& seq, const nlohmann::json& sent, uint32_t length);
  /// Frees the slot of a hand-off refused before it was received.
  void discard(const nlohmann::json& sent);

 private:
  struct Peer {
    std::unique_ptr<SlotTable> table;
    std::optional<gpu::llm::IpcMemory> memory;  ///< mapped when first received from
  };
  Result<Peer*> peer(const nlohmann::json& sent);
  std::map<std::string, Peer> peers_;  ///< by the sender's table name: each opened once
};

}  // namespace lifl::llm
