'use strict'
// What both Express readers run: the app as an app would commonly set it up, parameterised by what differs
// between Express 4 and 5 (the query parser, urlencoded's `extended`). Each reader passes its own copies of
// express, method-override and multer, installed in its own folder from its own lockfile. Bodies go through
// express.json(), express.urlencoded() and multer().any(); the method is overridden by the method-override
// package from the X-HTTP-Method-Override header and a _method query parameter (on POST), then by the README's
// body getter (req.body._method, after the body parsers). It echoes what Express parsed as JSON.

module.exports = function serve ({ NAME, express, methodOverride, multer, queryParser, extended, port }) {
  const app = express()
  app.disable('x-powered-by')
  app.set('query parser', queryParser)

  app.use(methodOverride('X-HTTP-Method-Override'))
  app.use(methodOverride('_method'))
  app.use(express.json())
  app.use(express.urlencoded({ extended }))
  app.use(multer().any())
  app.use(methodOverride(function (req) {
    if (req.body && typeof req.body === 'object' && '_method' in req.body) {
      return req.body._method
    }
  }))

  function echo (req) {
    const out = {
      reader: NAME,
      method: req.method,
      path: req.path,
      query: req.query,
      form: null,
      files: (Array.isArray(req.files) ? req.files : []).map((f) => f.fieldname),
      json: null
    }
    if (req.is('application/x-www-form-urlencoded') || req.is('multipart/form-data')) {
      out.form = req.body === undefined ? null : req.body
    } else if (req.is('application/json')) {
      out.json = req.body === undefined ? null : req.body
    }
    return out
  }

  app.use(function (req, res) {
    res.status(200).json(echo(req))
  })

  // A body parser, multer or the query parser refused the request: say why, with what was parsed before that.
  app.use(function (err, req, res, next) {
    let out
    try {
      out = echo(req)
    } catch (e) {
      out = { reader: NAME, method: req.method, path: req.path, query: null, form: null, files: [], json: null }
    }
    out.form = null
    out.json = null
    out.error = `${err.status || err.statusCode || 500} ${err.type || err.code || err.name}: ${err.message}`
    res.status(400).json(out)
  })

  app.listen(port, '127.0.0.1')
}
