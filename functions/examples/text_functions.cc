// Example functions: how to write a LIFL function.
//
// A chain step derives from lifl::fn::ChainFunction and implements handle(): it receives
// the incoming CloudEvent (attributes + data, read in place from the node's shared-memory
// object store) and returns the outgoing one. The runtime does the rest: it resolves the
// input descriptor, writes the output into a new store object, sends its descriptor to the
// next function of the chain through the eBPF router (or back to the gateway after the last
// step), and releases the input.
//
// To make a function available, register it under a name (see registerExampleFunctions at
// the bottom) and name it in a chain of the agent's YAML config:
//
//   functions:
//     chains:
//       - name: shout
//         functions: [example.upper, example.reverse, example.rot13]
//
// Then invoke the chain with a CloudEvent:
//
//   curl -X POST localhost:8080/v1/functions/shout
//        -H "ce-specversion: 1.0" -H "ce-id: 1" -H "ce-source: me"
//        -H 'ce-type: dev.example.text' -H 'content-type: text/plain' --data 'Hello'
//
// A function that needs more than one input per output (an aggregator, for example)
// derives from lifl::fn::Function and implements onEvent() directly, as functions/fl does.
#include <algorithm>
#include <cctype>

#include "lifl/functions/sdk.h"

namespace lifl::fn {
namespace {

/// Upper-cases ASCII text.
class Upper final : public ChainFunction {
 public:
  Result<Output> handle(Context&, const EventView& in) override {
    Output out{in.attributes, std::string(in.text())};
    std::transform(out.data.begin(), out.data.end(), out.data.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    out.attributes["type"] = "dev.lifl.example.upper";
    return out;
  }
};

/// Reverses the bytes of the data.
class Reverse final : public ChainFunction {
 public:
  Result<Output> handle(Context&, const EventView& in) override {
    Output out{in.attributes, std::string(in.text().rbegin(), in.text().rend())};
    out.attributes["type"] = "dev.lifl.example.reverse";
    return out;
  }
};

/// ROT13 of ASCII letters. Rejects empty input, to show how a step reports an error: the
/// caller gets the error's status and JSON body.
class Rot13 final : public ChainFunction {
 public:
  Result<Output> handle(Context&, const EventView& in) override {
    if (in.size == 0) return badRequest("empty_event", "example.rot13 needs non-empty data");
    Output out{in.attributes, std::string(in.text())};
    for (auto& ch : out.data) {
      unsigned char c = static_cast<unsigned char>(ch);
      if (c >= 'a' && c <= 'z')
        ch = static_cast<char>('a' + (c - 'a' + 13) % 26);
      else if (c >= 'A' && c <= 'Z')
        ch = static_cast<char>('A' + (c - 'A' + 13) % 26);
    }
    out.attributes["type"] = "dev.lifl.example.rot13";
    return out;
  }
};

/// Bounces every descriptor back to its sender, untouched. A raw Function (not a chain
/// step): the smallest possible function, used to measure one router hop plus the runtime.
class Echo final : public Function {
 public:
  Result<void> onEvent(Context& ctx, const Descriptor& d) override {
    Descriptor back = d;
    back.dst = d.src;
    return ctx.emit(back);
  }
};

}  // namespace

void registerExampleFunctions(FunctionRegistry& registry) {
  registry.add("example.echo", [] { return std::make_unique<Echo>(); });
  registry.add("example.upper", [] { return std::make_unique<Upper>(); });
  registry.add("example.reverse", [] { return std::make_unique<Reverse>(); });
  registry.add("example.rot13", [] { return std::make_unique<Rot13>(); });
}

}  // namespace lifl::fn
