#include "lifl/dataplane/object_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>
#include <random>

#include "unit/dataplane/temp_store.h"

namespace lifl::dataplane {
namespace {

using ObjectStoreTest = TempStoreTest;

TEST_F(ObjectStoreTest, AllocateResolveRelease) {
  auto a = store_->allocate(1000, ObjectKind::Update, 7);
  ASSERT_TRUE(a);
  EXPECT_EQ(a.value().size(), 1000u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.value().data()) % 64, 0u)
      << "payload is cache-line aligned";
  std::memset(a.value().data(), 0xab, 1000);
  Descriptor d{};
  a.value().describe(d);
  auto r = store_->resolve(d);
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().data(), a.value().data());
  EXPECT_EQ(r.value().owner(), 7u);
  EXPECT_EQ(store_->stats().liveObjects, 1u);
  store_->release(a.value().handle());
  EXPECT_EQ(store_->stats().liveObjects, 0u);
  auto stale = store_->resolve(d);
  ASSERT_FALSE(stale);
  EXPECT_EQ(stale.error().code, "stale_object");
  store_->release(a.value().handle());  // releasing a stale handle is a no-op
  EXPECT_EQ(store_->stats().liveObjects, 0u);
}

TEST_F(ObjectStoreTest, GenerationsAreNeverReused) {
  auto a = store_->allocate(4096, ObjectKind::Update, 1);
  ASSERT_TRUE(a);
  const ObjectHandle old = a.value().handle();
  store_->release(old);
  auto b = store_->allocate(4096, ObjectKind::Update, 1);  // likely the same memory
  ASSERT_TRUE(b);
  EXPECT_NE(b.value().handle().generation, old.generation);
  EXPECT_FALSE(store_->resolve(old)) << "a descriptor of the freed object must not resolve";
  EXPECT_TRUE(store_->resolve(b.value().handle()));
}

TEST_F(ObjectStoreTest, RefcountKeepsObjectAlive) {
  auto a = store_->allocate(10, ObjectKind::Model, 1);
  ASSERT_TRUE(a);
  store_->retain(a.value());
  EXPECT_EQ(a.value().refcount(), 2u);
  store_->release(a.value().handle());
  EXPECT_TRUE(store_->resolve(a.value().handle()));
  store_->release(a.value().handle());
  EXPECT_FALSE(store_->resolve(a.value().handle()));
}

TEST_F(ObjectStoreTest, RejectsForgedDescriptors) {
  auto a = store_->allocate(64, ObjectKind::Update, 1);
  ASSERT_TRUE(a);
  ObjectHandle h = a.value().handle();
  EXPECT_FALSE(store_->resolve(ObjectHandle{h.offset + 64, h.length, h.generation}));
  EXPECT_FALSE(store_->resolve(ObjectHandle{h.offset, h.length + 1'000'000, h.generation}));
  EXPECT_FALSE(store_->resolve(ObjectHandle{1ull << 40, 8, h.generation}));
  EXPECT_FALSE(store_->resolve(ObjectHandle{h.offset, h.length, 0}));
  // Regression (tests/fuzz/corpus/fuzz_descriptor/regression-offset-wraps): offsets so close
  // to 2^64 that offset + header size wraps used to pass the bounds check and be read.
  for (uint64_t offset : {~uint64_t{0} - 127, ~uint64_t{0} - 63, ~uint64_t{0} & ~uint64_t{63}})
    EXPECT_FALSE(store_->resolve(ObjectHandle{offset, 8, h.generation})) << offset;
}

TEST_F(ObjectStoreTest, FullStoreAnswers503) {
  auto big = store_->allocate(1ull << 30, ObjectKind::Update, 1);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().status, 503);
  EXPECT_EQ(big.error().code, "store_full");
  EXPECT_TRUE(store_->allocate(1024, ObjectKind::Update, 1))
      << "a failed allocation disturbs nothing";
}

TEST_F(ObjectStoreTest, ReclaimsWhatADeadProcessOwned) {
  auto kept = store_->allocate(100, ObjectKind::Update, 1);
  ASSERT_TRUE(kept);
  pid_t pid = ::fork();
  if (pid == 0) {
    auto s = ObjectStore::open(path_);
    if (!s) _exit(2);
    for (int i = 0; i < 5; ++i)
      if (!s.value()->allocate(1000 + i, ObjectKind::Partial, 42)) _exit(3);
    ::kill(::getpid(), SIGKILL);  // dies holding them
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  auto owned = store_->ownedBy(42);
  ASSERT_EQ(owned.size(), 5u);
  for (const auto& o : owned) {
    EXPECT_EQ(o.kind(), ObjectKind::Partial);
    store_->release(o.handle());
  }
  EXPECT_EQ(store_->stats().liveObjects, 1u) << "only the parent's object is left";
  EXPECT_TRUE(store_->resolve(kept.value().handle()));
}

// kill -9 of a process at any point inside allocate/release must never wedge or corrupt the
// store. 20 random kill points; each time the parent must still allocate and free within a
// bounded time, and everything the child held is reclaimable.
TEST_F(ObjectStoreTest, SurvivesKillInsideAllocator) {
  std::mt19937 rng(12345);
  for (int trial = 0; trial < 20; ++trial) {
    pid_t pid = ::fork();
    if (pid == 0) {
      auto s = ObjectStore::open(path_);
      if (!s) _exit(2);
      std::mt19937 r(static_cast<unsigned>(trial));
      for (;;) {
        auto o = s.value()->allocate(64 + r() % 8192, ObjectKind::Update, 99);
        if (o && (r() & 1)) s.value()->release(o.value().handle());
      }
    }
    ::usleep(1000 + rng() % 20000);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    auto done = std::async(std::launch::async, [&] {
      store_->reclaimIncomplete(99);
      for (const auto& leaked : store_->ownedBy(99)) store_->release(leaked.handle());
      auto o = store_->allocate(128, ObjectKind::Update, 1);
      if (o) store_->release(o.value().handle());
      return static_cast<bool>(o);
    });
    ASSERT_EQ(done.wait_for(std::chrono::seconds(5)), std::future_status::ready)
        << "store wedged after kill in trial " << trial;
    EXPECT_TRUE(done.get());
  }
  EXPECT_EQ(store_->stats().liveObjects, 0u);
}

}  // namespace
}  // namespace lifl::dataplane

namespace lifl::dataplane {
namespace {

// Hugepage backing: reserves a few 2 MiB pages and mounts a private hugetlbfs for the test,
// restoring both afterwards. Needs root (CI is root); skipped with a message elsewhere.
TEST(ObjectStoreHugepages, AllocatesOnHugetlbfs) {
  if (::geteuid() != 0) GTEST_SKIP() << "hugepage test needs root to reserve pages; skipped";
  const char* knob = "/proc/sys/vm/nr_hugepages";
  long before = 0;
  {
    FILE* f = std::fopen(knob, "r");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fscanf(f, "%ld", &before), 1);
    std::fclose(f);
  }
  auto setPages = [&](long n) {
    FILE* f = std::fopen(knob, "w");
    if (!f) return false;
    std::fprintf(f, "%ld\n", n);
    return std::fclose(f) == 0;
  };
  if (!setPages(before + 16)) GTEST_SKIP() << "cannot reserve hugepages on this host; skipped";
  char dir[] = "/tmp/lifl-huge-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string mount = std::string("mount -t hugetlbfs -o pagesize=2M nodev ") + dir;
  if (std::system(mount.c_str()) != 0) {
    setPages(before);
    ::rmdir(dir);
    GTEST_SKIP() << "cannot mount hugetlbfs; skipped";
  }
  {
    auto store = ObjectStore::create({std::string(dir) + "/store", 17ull << 20, true});
    ASSERT_TRUE(store) << store.error().toString();
    EXPECT_EQ(store.value()->mappedBytes() % (2u << 20), 0u) << "rounded to whole hugepages";
    auto a = store.value()->allocate(5u << 20, ObjectKind::Update, 3);
    ASSERT_TRUE(a) << a.error().toString();
    std::memset(a.value().data(), 0x5a, 5u << 20);
    auto r = store.value()->resolve(a.value().handle());
    ASSERT_TRUE(r);
    EXPECT_EQ(r.value().data()[(5u << 20) - 1], std::byte{0x5a});
    store.value()->release(a.value().handle());
    EXPECT_EQ(store.value()->stats().liveObjects, 0u);
  }
  EXPECT_EQ(std::system((std::string("umount ") + dir).c_str()), 0);
  ::rmdir(dir);
  EXPECT_TRUE(setPages(before));
}

}  // namespace
}  // namespace lifl::dataplane
