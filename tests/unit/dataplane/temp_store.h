// A fixture with an object store of its own in /dev/shm, named after the test and removed
// after it (also when a forked user of the segment was killed).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "lifl/dataplane/object_store.h"

namespace lifl::dataplane {

class TempStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = "/dev/shm/lifl-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    auto s = ObjectStore::create({path_, 64ull << 20, false});
    ASSERT_TRUE(s) << s.error().toString();
    store_ = std::move(s).value();
  }
  void TearDown() override {
    store_.reset();
    ::unlink(path_.c_str());
  }
  std::string path_;
  std::unique_ptr<ObjectStore> store_;
};

}  // namespace lifl::dataplane
