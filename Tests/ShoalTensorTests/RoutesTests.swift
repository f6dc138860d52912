import ShoalTensor
import Testing

@Suite struct RoutesTests {
    /// The three ways of making routes agree: appending, a list, and the wire's columns.
    @Test func columnsListAndAppendsAgree() {
        var appended = Routes()
        appended.append(token: 0, expert: 1, weight: 0.5)
        appended.append(token: 0, expert: 6, weight: 0.5)
        appended.append(token: 1, expert: 0, weight: 1)
        let listed = Routes([Route(token: 0, expert: 1, weight: 0.5), Route(token: 0, expert: 6, weight: 0.5),
                             Route(token: 1, expert: 0, weight: 1)])
        let columns = Routes(token: [0, 0, 1], expert: [1, 6, 0], weight: [0.5, 0.5, 1])
        #expect(appended == listed && listed == columns)
        #expect(columns.tokenCount == 2 && columns.count == 3)
        #expect(Array(columns) == [Route(token: 0, expert: 1, weight: 0.5), Route(token: 0, expert: 6, weight: 0.5),
                                   Route(token: 1, expert: 0, weight: 1)])
        appended.removeAll()
        #expect(appended == Routes() && appended.tokenCount == 0)
    }

    /// Each break of the order every backend's summation relies on stops the process.
    @Test func routesOutOfOrderAreAProgrammingError() async {
        await #expect(processExitsWith: .failure) {
            var routes = Routes()
            routes.append(token: 0, expert: 3, weight: 1)
            routes.append(token: 0, expert: 3, weight: 1)  // the same expert twice
        }
        await #expect(processExitsWith: .failure) {
            var routes = Routes()
            routes.append(token: 0, expert: 3, weight: 1)
            routes.append(token: 0, expert: 2, weight: 1)  // experts descending
        }
        await #expect(processExitsWith: .failure) {
            var routes = Routes()
            routes.append(token: 0, expert: 3, weight: 1)
            routes.append(token: 2, expert: 0, weight: 1)  // token 1 has no route
        }
        await #expect(processExitsWith: .failure) {
            _ = Routes(token: [1], expert: [0], weight: [1])  // token 0 has no route
        }
        await #expect(processExitsWith: .failure) {
            _ = Routes(token: [0, 0], expert: [0], weight: [1, 1])  // columns of different lengths
        }
    }
}
