// The slot table of the CUDA IPC KV hand-off (functions/llm/kv_handoff.h): a sender's table
// opened by a receiver through its name, each slot taken once until it is given back, and the
// name gone with the sender.
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "kv_handoff.h"

namespace lifl::llm {
namespace {

std::string uniqueName() { return "/lifl-kv-test-" + std::to_string(::getpid()); }

TEST(KvSlotTable, SlotsAreTakenOnceAndFreedByTheOtherSide) {
  auto sender = SlotTable::create(uniqueName(), 3);
  ASSERT_TRUE(sender.has_value()) << sender.error().detail;
  auto receiver = SlotTable::open(uniqueName());
  ASSERT_TRUE(receiver.has_value()) << receiver.error().detail;
  EXPECT_EQ(receiver.value()->slots(), 3u);
  auto& s = *sender.value();
  EXPECT_EQ(s.acquire(), 0u);
  EXPECT_EQ(s.acquire(), 1u);
  EXPECT_EQ(s.acquire(), 2u);
  EXPECT_EQ(s.acquire(), std::nullopt) << "all three in use";
  receiver.value()->release(1);  // the receiver copied slot 1
  EXPECT_EQ(s.acquire(), 1u);
  EXPECT_EQ(s.acquire(), std::nullopt);
  receiver.value()->release(7);  // out of range: ignored
  EXPECT_EQ(s.acquire(), std::nullopt);
}

TEST(KvSlotTable, TheNameGoesWithTheSender) {
  { auto sender = SlotTable::create(uniqueName(), 2); }
  auto gone = SlotTable::open(uniqueName());
  ASSERT_FALSE(gone.has_value());
  EXPECT_EQ(gone.error().code, "kv_handoff");
  // A killed sender's stale table with the same name is replaced, every slot free again.
  auto first = SlotTable::create(uniqueName(), 2);
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(first.value()->acquire().has_value());
  auto second = SlotTable::create(uniqueName(), 2);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second.value()->acquire(), 0u);
}

}  // namespace
}  // namespace lifl::llm
