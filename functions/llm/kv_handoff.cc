#include "kv_handoff.h"

#include <unistd.h>

#include <atomic>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstring>

#include "lifl/common/base64.h"

namespace lifl::llm {

namespace bip = boost::interprocess;

struct SlotTable::Mapping {
  bip::shared_memory_object shm;
  bip::mapped_region region;
  std::atomic_ref<uint32_t> flag(uint32_t slot) const {
    return std::atomic_ref<uint32_t>(static_cast<uint32_t*>(region.get_address())[slot]);
  }
};

SlotTable::SlotTable(std::unique_ptr<Mapping> mapping, std::string name, uint32_t slots, bool owner)
    : mapping_(std::move(mapping)), name_(std::move(name)), slots_(slots), owner_(owner) {}

SlotTable::~SlotTable() {
  mapping_.reset();
  if (owner_) bip::shared_memory_object::remove(name_.c_str());
}

Result<std::unique_ptr<SlotTable>> SlotTable::create(const std::string& name, uint32_t slots) {
  try {
    bip::shared_memory_object::remove(name.c_str());  // a killed sender's, with this pid
    auto m = std::make_unique<Mapping>();
    m->shm = bip::shared_memory_object(bip::create_only, name.c_str(), bip::read_write);
    m->shm.truncate(slots * sizeof(uint32_t));  // zero-filled: every slot free
    m->region = bip::mapped_region(m->shm, bip::read_write);
    return std::unique_ptr<SlotTable>(new SlotTable(std::move(m), name, slots, true));
  } catch (const bip::interprocess_exception& e) {
    return internal("kv_handoff", "cannot create the slot table " + name + ": " + e.what());
  }
}

Result<std::unique_ptr<SlotTable>> SlotTable::open(const std::string& name) {
  try {
    auto m = std::make_unique<Mapping>();
    m->shm = bip::shared_memory_object(bip::open_only, name.c_str(), bip::read_write);
    m->region = bip::mapped_region(m->shm, bip::read_write);
    const auto slots = static_cast<uint32_t>(m->region.get_size() / sizeof(uint32_t));
    return std::unique_ptr<SlotTable>(new SlotTable(std::move(m), name, slots, false));
  } catch (const bip::interprocess_exception& e) {
    return internal("kv_handoff", "cannot open the slot table " + name + ": " + e.what());
  }
}

std::optional<uint32_t> SlotTable::acquire() {
  for (uint32_t s = 0; s < slots_; ++s) {
    uint32_t free = 0;
    if (mapping_->flag(s).compare_exchange_strong(free, 1)) return s;
  }
  return std::nullopt;
}

void SlotTable::release(uint32_t slot) {
  if (slot < slots_) mapping_->flag(slot).store(0);
}

namespace {

std::string encode(const gpu::llm::IpcMemory::Handle& h) {
  return base64Encode(std::string_view(reinterpret_cast<const char*>(h.data()), h.size()));
}

Result<gpu::llm::IpcMemory::Handle> decode(const std::string& text) {
  gpu::llm::IpcMemory::Handle h{};
  const auto bytes = base64Decode(text);
  if (!bytes || bytes->size() != h.size())
    return internal("bad_handoff", "the IPC handle is malformed");
  std::memcpy(h.data(), bytes->data(), h.size());
  return h;
}

}  // namespace

KvHandoffSender::KvHandoffSender(gpu::llm::IpcMemory memory, std::unique_ptr<SlotTable> table,
                                 std::string name, uint64_t slotBytes)
    : memory_(std::move(memory)),
      table_(std::move(table)),
      name_(std::move(name)),
      slotBytes_(slotBytes) {}

Result<std::unique_ptr<KvHandoffSender>> KvHandoffSender::create(const Engine& engine,
                                                                 uint32_t slots,
                                                                 uint32_t slotTokens) {
  // In the cache's element type: BF16 pages hand off half the bytes of fp32 ones.
  const uint64_t slotBytes = engine.kvBytes(slotTokens);
  LIFL_TRY(memory, gpu::llm::IpcMemory::allocate(slots * slotBytes));
  static std::atomic<uint32_t> made{0};
  const std::string name =
      "/lifl-kv-" + std::to_string(::getpid()) + "-" + std::to_string(made.fetch_add(1));
  LIFL_TRY(table, SlotTable::create(name, slots));
  return std::unique_ptr<KvHandoffSender>(
      new KvHandoffSender(std::move(memory), std::move(table), name, slotBytes));
}

Result<std::optional<nlohmann::json>> KvHandoffSender::send(const Engine& engine,
                                                            const Sequence& seq) {
  if (engine.kvBytes(seq.length) > slotBytes_) return std::optional<nlohmann::json>();
  const auto slot = table_->acquire();
  if (!slot) return std::optional<nlohmann::json>();
  engine.exportKv(seq, reinterpret_cast<std::byte*>(memory_.data()) + *slot * slotBytes_);
  return std::optional<nlohmann::json>(nlohmann::json{{"handle", encode(memory_.handle())},
                                                      {"table", name_},
                                                      {"slot", *slot},
                                                      {"slot_bytes", slotBytes_}});
}

void KvHandoffSender::cancel(const nlohmann::json& sent) {
  table_->release(sent.value("slot", table_->slots()));
}

Result<KvHandoffReceiver::Peer*> KvHandoffReceiver::peer(const nlohmann::json& sent) {
  const std::string name = sent.value("table", "");
  auto it = peers_.find(name);
  if (it == peers_.end()) {
    LIFL_TRY(table, SlotTable::open(name));
    it = peers_.emplace(name, Peer{std::move(table), std::nullopt}).first;
  }
  return &it->second;
}

Result<void> KvHandoffReceiver::receive(Engine& engine, Sequence& seq, const nlohmann::json& sent,
                                        uint32_t length) {
  LIFL_TRY(p, peer(sent));
  const uint32_t slot = sent.value("slot", p->table->slots());
  const uint64_t slotBytes = sent.value("slot_bytes", uint64_t{0});
  auto copy = [&]() -> Result<void> {
    if (!p->memory) {
      LIFL_TRY(handle, decode(sent.value("handle", "")));
      LIFL_TRY(memory, gpu::llm::IpcMemory::open(handle));
      p->memory = std::move(memory);
    }
    if (slot >= p->table->slots() || engine.kvBytes(length) > slotBytes)
      return internal("bad_handoff", "the KV hand-off names no valid slot");
    return engine.importKv(seq, reinterpret_cast<std::byte*>(p->memory->data()) + slot * slotBytes,
                           length);
  };
  auto copied = copy();
  p->table->release(slot);
  return copied;
}

void KvHandoffReceiver::discard(const nlohmann::json& sent) {
  if (auto p = peer(sent)) p.value()->table->release(sent.value("slot", p.value()->table->slots()));
}

}  // namespace lifl::llm
