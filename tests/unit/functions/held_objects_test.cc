#include "lifl/functions/held_objects.h"

#include <gtest/gtest.h>

#include "unit/dataplane/temp_store.h"

namespace lifl::fn {
namespace {

using dataplane::ObjectKind;

class HeldObjectsTest : public dataplane::TempStoreTest {
 protected:
  bool live(const dataplane::ObjectRef& o) const { return bool(store_->resolve(o.handle())); }
};

constexpr InstanceId kSelf = 21, kPeer = 22;

// What a Release frees: taken on and still ours. Never what a peer made ours that the
// instance has not received (the event queued behind the Release), what it passed on, or a
// control object (the next Assign).
TEST_F(HeldObjectsTest, ReleaseFreesWhatWasTakenOnAndIsStillOwned) {
  HeldObjects held(*store_, kSelf);
  auto received = store_->allocate(100, ObjectKind::Update, kSelf);
  auto allocated = store_->allocate(100, ObjectKind::Partial, kSelf);
  auto passedOn = store_->allocate(100, ObjectKind::Partial, kSelf);
  auto inFlight = store_->allocate(100, ObjectKind::Event, kSelf);  // not received yet
  auto control = store_->allocate(100, ObjectKind::Control, kSelf);
  ASSERT_TRUE(received && allocated && passedOn && inFlight && control);
  for (const auto* o : {&received, &allocated, &passedOn, &control}) held.note(o->value().handle());
  passedOn.value().setOwner(kPeer);
  held.releaseOwned();
  EXPECT_FALSE(live(received.value()));
  EXPECT_FALSE(live(allocated.value()));
  EXPECT_TRUE(live(passedOn.value())) << "the peer's now";
  EXPECT_TRUE(live(inFlight.value())) << "queued behind the Release: the next assignment's";
  EXPECT_TRUE(live(control.value()));
  EXPECT_EQ(held.size(), 0u);
  // Freed by its function already: noted, and nothing happens to the object now there.
  auto freed = store_->allocate(100, ObjectKind::Update, kSelf);
  held.note(freed.value().handle());
  store_->release(freed.value().handle());
  auto reused = store_->allocate(100, ObjectKind::Update, kSelf);  // maybe the same bytes
  held.releaseOwned();
  EXPECT_TRUE(live(reused.value())) << "a new generation is not the noted object";
}

// A long-lived instance notes every event; what it freed or passed on is forgotten as the
// set grows, so the set stays about as large as what it holds.
TEST_F(HeldObjectsTest, TheSetStaysAsSmallAsWhatIsHeld) {
  HeldObjects held(*store_, kSelf);
  auto kept = store_->allocate(64, ObjectKind::Partial, kSelf);
  held.note(kept.value().handle());
  for (int i = 0; i < 20000; ++i) {
    auto event = store_->allocate(64, ObjectKind::Event, kSelf);
    ASSERT_TRUE(event);
    held.note(event.value().handle());
    store_->release(event.value().handle());
  }
  EXPECT_LT(held.size(), 1025u);
  held.releaseOwned();
  EXPECT_FALSE(live(kept.value())) << "what is still held is never forgotten";
}

}  // namespace
}  // namespace lifl::fn
