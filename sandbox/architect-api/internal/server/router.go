package server

import (
	"net/http"
	"sort"
	"strings"
)

type params map[string]string

type handlerFunc func(w http.ResponseWriter, r *http.Request, p params)

type route struct {
	pattern  string
	segs     []string
	static   int
	handlers map[string]handlerFunc
}

func (s *Server) handle(pattern string, handlers map[string]handlerFunc) {
	rt := &route{pattern: pattern, segs: strings.Split(strings.Trim(pattern, "/"), "/"), handlers: handlers}
	for _, seg := range rt.segs {
		if !isParam(seg) {
			rt.static++
		}
	}
	s.routes = append(s.routes, rt)
}

func isParam(seg string) bool { return strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") }

// match finds the route for path; static segments win over parameters
// (/api/v1/errors/aggregate before /api/v1/errors/{id}).
func (s *Server) match(path string) (*route, params) {
	if path != "/" && strings.HasSuffix(path, "/") {
		return nil, nil
	}
	segs := strings.Split(strings.Trim(path, "/"), "/")
	var best *route
	var bestParams params
	for _, rt := range s.routes {
		if len(rt.segs) != len(segs) {
			continue
		}
		p := params{}
		ok := true
		for i, seg := range rt.segs {
			if isParam(seg) {
				if segs[i] == "" {
					ok = false
					break
				}
				p[seg[1:len(seg)-1]] = segs[i]
			} else if seg != segs[i] {
				ok = false
				break
			}
		}
		if ok && (best == nil || rt.static > best.static) {
			best, bestParams = rt, p
		}
	}
	return best, bestParams
}

func (rt *route) allow() string {
	methods := []string{"OPTIONS"}
	for m := range rt.handlers {
		methods = append(methods, m)
	}
	sort.Strings(methods)
	return strings.Join(methods, ", ")
}
