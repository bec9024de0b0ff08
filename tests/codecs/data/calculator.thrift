// IDL for the Thrift codec golden tests: frames are generated from it with thriftpy2.
namespace py calculator

struct User {
  1: i64 id,
  2: string name,
  3: list<string> tags,
  4: map<string, i32> attrs,
  5: bool active,
  6: double score,
  7: optional User friend,
  8: set<i16> codes,
  9: list<bool> flags,
}

exception InvalidOperation {
  1: i32 whatOp,
  2: string why,
}

service Calculator {
  void ping(),
  i32 add(1: i32 num1, 2: i32 num2),
  string echo(1: string text),
  User getUser(1: i64 id, 2: string name) throws (1: InvalidOperation ouch),
  oneway void zip(1: string note),
  list<User> users(1: list<User> input, 2: map<string, list<User>> groups),
}
