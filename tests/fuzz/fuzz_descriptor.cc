// libFuzzer target: a 64-byte descriptor as an instance or a peer agent could send it, with
// any offset, length and generation. The store must resolve it to a live object or refuse it,
// never read outside its segment; the kind is named whatever its value.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "lifl/common/descriptor.h"
#include "lifl/dataplane/object_store.h"

namespace {

/// A small store with a few live objects, made once per fuzzing process.
lifl::dataplane::ObjectStore& store() {
  static std::unique_ptr<lifl::dataplane::ObjectStore> s = [] {
    lifl::dataplane::StoreConfig config;
    config.path = "/dev/shm/lifl-fuzz-" + std::to_string(::getpid());
    config.bytes = 16ull << 20;
    auto created = lifl::dataplane::ObjectStore::create(config);
    auto owned = std::move(created).value();
    for (uint64_t bytes : {64, 4096, 100000})
      (void)owned->allocate(bytes, lifl::dataplane::ObjectKind::Update, 1);
    ::unlink(config.path.c_str());  // mapped; the name is not needed
    return owned;
  }();
  return *s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lifl::Descriptor d{};
  std::memcpy(&d, data, std::min(size, sizeof d));
  (void)lifl::kindName(d.kind);
  if (auto ref = store().resolve(d); ref) {
    const auto* bytes = reinterpret_cast<const volatile unsigned char*>(ref.value().data());
    if (ref.value().handle().length > 0) (void)bytes[ref.value().handle().length - 1];
  }
  return 0;
}
